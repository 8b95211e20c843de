"""LLM access: the async OpenAI-compatible client, endpoint config and keys, pricing, JSON extraction from
answers, the local teacher server. Uses sftkit.io only.
"""
