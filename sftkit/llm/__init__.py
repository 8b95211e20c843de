"""LLM access: the async OpenAI-compatible client, the journaled-request runner every LLM stage sends through,
endpoint config and keys, pricing, JSON extraction from answers, the local teacher server. Uses sftkit.io only.
"""
