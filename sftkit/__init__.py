"""Shared code of the SFT toolkit, one folder per part of the pipeline.

    io       records, formats, JSONL + journal, blocks, text checks   (imports nothing else from sftkit)
    llm      client, journaled-request runner, endpoint config/keys, pricing, JSON extraction,
             local teacher   (-> io)
    clean    filters, PII, near-dup (MinHash LSH, SimHash), mixing; the prep stage over them   (-> io)
    docs     documents -> knowledge slices   (-> io)
    distill  generation, judging (+ the judge stage), semantic dedup   (-> io, llm, clean)
    model    chat templates, training data, MiniCPM4 conversion, inference   (-> io)
    evaluate tuned vs base: answers, pairwise judging, win rate, length control, contamination   (-> io, llm, clean,
             model, distill)
    report   the HTML data report: stages' stats + data files -> funnel, lengths, scores, plots   (-> io)
    testing  fixtures for tests/ and bench/   (may import anything; nothing imports it)

tests/test_layout.py checks these arrows.
"""

__version__ = "0.1.0"
