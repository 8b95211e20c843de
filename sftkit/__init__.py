"""Shared code of the SFT toolkit: records, JSONL I/O, the async LLM client, text checks."""

__version__ = "0.1.0"
