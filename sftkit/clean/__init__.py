"""Cleaning: filters with their own counts, PII, near-duplicate detection (MinHash LSH, SimHash index), source
mixing; and prep's stage over them (`stage`: block workers, exact/near dedup, the on-disk record pool, the
split and the mix, the stats). Uses sftkit.io only.
"""
