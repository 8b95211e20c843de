"""The LLM stages: generation and judging (prompts, verdicts, semantic dedup). Uses sftkit.io, sftkit.llm and
sftkit.clean.
"""
