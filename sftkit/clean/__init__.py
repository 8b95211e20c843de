"""Cleaning: filters with their own counts, PII, near-duplicate detection (MinHash LSH, SimHash index), source
mixing. Uses sftkit.io only.
"""
