"""Test fixtures shared by tests/ and bench/: the scripted OpenAI-compatible server, tiny models and tokenizers,
document samples. Never imported by product code.
"""
