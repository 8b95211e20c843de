"""Record formats and I/O: the canonical record and every SPEC form, JSONL reading/writing and the journal,
streaming blocks, format conversion, text checks. Imports nothing else from sftkit.
"""
