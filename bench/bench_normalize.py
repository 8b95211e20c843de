"""What normalisation changes in real records: characters changed per Unicode form (prep's --unicode).

    python bench/bench_normalize.py [--records ../shared/data/hit/generated_data.jsonl]

Every message of every record (any SPEC form) is normalised exactly as prep's Normalize filter does it, once per
form (keep-cjk: the default; nfkc; none: whitespace and control cleaning only). Each changed message is diffed
against the original (difflib): "characters changed" counts, per differing stretch, the longer of the old and new
stretch. The table shows records and messages touched, characters changed, and the most frequent edits.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sftkit.clean.filters import UNICODE_FORMS, normalize_many  # noqa: E402
from sftkit.io.jsonl import iter_jsonl  # noqa: E402
from sftkit.io.records import RecordError, to_record  # noqa: E402


def diff_counts(old: str, new: str, edits: Counter[str]) -> int:
    changed = 0
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        changed += max(i2 - i1, j2 - j1)
        edits[f"{old[i1:i2]!r} -> {new[j1:j2]!r}"] += 1
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", default=str(ROOT.parent / "shared/data/hit/generated_data.jsonl"),
                    help="records, any SPEC form (default: the 1,142 real generated records beside the checkout)")
    ap.add_argument("--top", type=int, default=8, help="most frequent edits to list per form (8)")
    args = ap.parse_args(argv)
    records = []
    for _line, obj in iter_jsonl(args.records):
        try:
            records.append(to_record(obj))
        except RecordError:
            continue
    texts = [m["content"] for r in records for m in r["messages"]]
    owner = [i for i, r in enumerate(records) for _ in r["messages"]]
    total_chars = sum(len(t) for t in texts)
    print(f"{len(records)} records, {len(texts)} messages, {total_chars} characters: {args.records}\n")
    print(f"{'form':<10}{'records changed':>17}{'messages changed':>18}{'characters changed':>20}  most frequent edits")
    for form in UNICODE_FORMS:
        out = normalize_many(texts, form)
        edits: Counter[str] = Counter()
        chars = 0
        touched_msgs = 0
        touched_recs = set()
        for i, (old, new) in enumerate(zip(texts, out, strict=True)):
            if old != new:
                touched_msgs += 1
                touched_recs.add(owner[i])
                chars += diff_counts(old, new, edits)
        top = ", ".join(f"{e} x{n}" for e, n in edits.most_common(args.top))
        print(f"{form:<10}{len(touched_recs):>17}{touched_msgs:>18}{chars:>20}  {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
