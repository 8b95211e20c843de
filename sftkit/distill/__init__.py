"""The LLM stages: generation and judging (prompts, verdicts, the judge stage on the runner, semantic dedup).
Uses sftkit.io, sftkit.llm and sftkit.clean.
"""
