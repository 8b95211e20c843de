"""The data report: every stage's stats JSON and data files -> one self-contained HTML page (report.py)."""
