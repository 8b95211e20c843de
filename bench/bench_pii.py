"""PII detection through prep's CLI, judged by outside oracles: recall per kind, false positives per look-alike,
and the throughput of the PII step against the previous detector in the same run.

    python bench/bench_pii.py [--n 2000] [--baseline main]

1. Cases from tests/pii_cases.py: for every kind, --n values each accepted by its oracle (python-stdnum for IDs
   and Luhn, phonenumbers for mobile and fixed-line numbers, ipaddress for IPv4/IPv6), glued into Chinese text
   (against Han characters, after a full-width colon, in brackets, at line ends, glued to Latin letters, with and
   without a context word, a card followed by another number); for every look-alike (IDs with a wrong check
   digit, Luhn-invalid numbers, order numbers, random 15-digit numbers, timestamps, dates, versions, clock
   times), --n values each refused by its oracle; and issue 22's families (pii_cases.FAMILIES), --n each: bank
   cards followed by an amount, a count, a date or another number after a space or dash, in every grouping
   (contiguous, 4-4-4-4 with spaces or dashes, 6 then the rest, 19 digits 4-4-4-4-3; with a card word and any
   prefix, or a 62 prefix alone), valid and Luhn-invalid at every end; the one shape the rule cannot decide (a
   16-digit card in 4s, the same separator, 1-3 digits), judged by what Luhn says of both readings; resident IDs
   born before their division code was created, with a code the table lacks, a future birth date, or a wrong
   check digit; and one ID for every code of python-stdnum's table. Each goes into the answer of one record long
   and Chinese enough to pass every other filter (a digit never glued to a unit word of the body text: "128年"
   makes 128 a number of its own).
2. prep_sft_firefly_hit.py --drop-pii --pii-kinds (every kind) --no-dedup on them: a positive is found when its
   record is dropped, a look-alike is a false positive when its record is dropped (one table, a row per family;
   the goal in every row: recall >= 0.99, false positives <= 0.01). Then --redact-pii: found
   exactly when the value is gone and its kind's token stands in its place. Landline is also run with the default
   kinds (it is off by default).
3. Throughput: records/s of the PII step (the batch gate, then the detectors on the records it flags, as
   sftkit.clean.filters.Pii runs them) on firefly-like records, this detector and --baseline's (git show REF:sftkit/
   pii.py) in one process, alternated, best of --repeats each.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import pii_cases  # noqa: E402

from sftkit.clean import pii  # noqa: E402
from sftkit.clean.filters import _owners, normalize_text  # noqa: E402
from sftkit.io.convert import fast_record  # noqa: E402


def record(rng: random.Random, text: str) -> dict[str, str]:
    body = pii_cases.han(rng, 90, 120)
    cut = rng.randrange(len(body))
    if text[-1:].isdigit() and body[cut] in pii_cases.UNIT_WORDS:
        text += "，"  # "…7890 128年": the body would make the card's last group a number of its own (a year)
    return {"instruction": "请根据下面的资料回答问题：" + pii_cases.han(rng, 20, 30), "input": "",
            "output": body[:cut] + text + body[cut:]}


def run_prep(rows: list[dict[str, str]], work: Path, name: str, *flags: str) -> set[str]:
    """prep on the rows; the content ids of the records it kept (and their rows)."""
    src = work / f"{name}.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = work / f"{name}.out.jsonl"
    subprocess.run([sys.executable, str(ROOT / "prep_sft_firefly_hit.py"), "--firefly-json", str(src), "--out",
                    str(out), "--no-dedup", "--log", "WARNING", *flags], check=True, stdout=subprocess.DEVNULL)
    return {json.loads(line)["id"]: json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()}


def cases(n: int, rng: random.Random) -> list[tuple[str, str, str, str, str]]:
    """(table, family, kind, text, the exact value to find or "" for none) for every case of every family."""
    out = []
    for kind in pii.KINDS:
        for _ in range(n):
            text, value = pii_cases.case(rng, kind)
            out.append(("kinds", kind, kind, text, value))
    for name in sorted(pii_cases.LOOKALIKES):
        for _ in range(n):
            out.append(("look-alikes", name, "", pii_cases.lookalike(rng, name), ""))
    for name, (kind, make) in pii_cases.FAMILIES.items():
        for _ in range(n):
            text, value = make(rng)
            out.append(("issue 22", name, kind, text, value))
    for text, value in pii_cases.every_code_ids(rng):
        out.append(("issue 22", "ID, every code of the table (one each)", "id", text, value))
    return out


def quality(n: int, seed: int, work: Path) -> dict[str, Any]:
    rng = random.Random(seed)
    labels = cases(n, rng)
    rows = [record(rng, text) for _, _, _, text, _ in labels]
    ids = [fast_record(r, "firefly")["id"] for r in rows]
    every = ",".join(pii.KINDS)
    kept_drop = run_prep(rows, work, "drop", "--drop-pii", "--pii-kinds", every)
    kept_redact = run_prep(rows, work, "redact", "--redact-pii", "--pii-kinds", every)
    kept_default = run_prep([r for r, lab in zip(rows, labels, strict=True) if lab[1] == "landline"], work,
                            "default", "--drop-pii")
    if len(kept_redact) != len(rows):
        raise SystemExit(f"prep kept {len(kept_redact)} of {len(rows)} records with --redact-pii: another filter "
                         "dropped some, so the cases do not measure PII alone")
    out: dict[str, Any] = {}
    for table, family in dict.fromkeys((lab[0], lab[1]) for lab in labels):
        mine = [i for i, lab in enumerate(labels) if lab[:2] == (table, family)]
        pos = [i for i in mine if labels[i][4]]
        neg = [i for i in mine if not labels[i][4]]
        exact = 0
        for i in pos:
            kind, value = labels[i][2], labels[i][4]
            answer = kept_redact[ids[i]]["messages"][1]["content"]
            original = normalize_text(rows[i]["output"])  # what the PII step saw (prep normalises first)
            exact += answer == original.replace(normalize_text(value), pii.TOKENS[kind], 1)
        row: dict[str, Any] = {"n": len(mine), "positives": len(pos)}
        if pos:
            row["recall"] = round(sum(ids[i] not in kept_drop for i in pos) / len(pos), 4)
            row["exact_span_and_kind"] = round(exact / len(pos), 4)
        if neg:
            row["false_positive_rate"] = round(sum(ids[i] not in kept_drop for i in neg) / len(neg), 4)
        if family == "landline":
            row["recall_with_default_kinds"] = round(1 - len(kept_default) / len(mine), 4)
        out.setdefault(table, {})[family] = row
    return out


def print_quality(q: dict[str, Any]) -> None:
    """One table: every family with its recall and exactness (over the cases with something to find, "to find")
    and its false positive rate (over the rest); the goal per family is recall >= 0.99 and false positives <= 0.01.
    In the undecidable rows what there is to find is what the oracle's Luhn says of both readings."""
    def cell(row: dict[str, Any], key: str) -> str:
        return f"{row[key]:.4f}" if key in row else "-"
    print(f"{'family':<72}{'n':>6}{'to find':>8}{'recall':>9}{'exact':>8}{'false pos':>11}")
    for table, families in q.items():
        print(f"-- {table}")
        for family, r in families.items():
            extra = f"  (default kinds: {r['recall_with_default_kinds']:.4f}, off by default)" \
                if family == "landline" else ""
            goal = "" if family.startswith("undecidable") or (r.get("recall", 1) >= 0.99 and
                                                              r.get("false_positive_rate", 0) <= 0.01) \
                else "  BELOW GOAL"
            print(f"{family:<72}{r['n']:>6}{r['positives']:>8}{cell(r, 'recall'):>9}{cell(r, 'exact_span_and_kind'):>8}"
                  f"{cell(r, 'false_positive_rate'):>11}{extra}{goal}")


def load_baseline(ref: str) -> Any:
    source = subprocess.run(["git", "show", f"{ref}:sftkit/clean/pii.py"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout
    path = Path(tempfile.mkdtemp()) / "pii_baseline.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("pii_baseline", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["pii_baseline"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def pii_step(module: Any, batches: list[list[list[str]]], kinds: tuple[str, ...]) -> int:
    """What sftkit.clean.filters.Pii does per batch: one gate scan, the detectors on the flagged records only."""
    dropped = 0
    for batch in batches:
        texts = [t for rec in batch for t in rec]
        owner = [i for i, rec in enumerate(batch) for _ in rec]
        try:
            positions = module.gate_positions("\n".join(texts), kinds)
        except TypeError:  # the baseline's gate took no kinds
            positions = module.gate_positions("\n".join(texts))
        for r in {owner[t] for t in _owners(texts, positions)}:
            dropped += any(module.find_pii(t, kinds) for t in batch[r])
    return dropped


def throughput(records: int, repeats: int, baseline: str) -> dict[str, Any]:
    gen = ROOT / "bench" / "make_firefly_like.py"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ff.jsonl"
        subprocess.run([sys.executable, str(gen), "--n", str(records), "--jsonl", "--out", str(path)], check=True,
                       stderr=subprocess.DEVNULL)
        recs = [fast_record(json.loads(line), "firefly") for line in path.read_text(encoding="utf-8").splitlines()]
    batches = [[[m["content"] for m in r["messages"]] for r in recs[i:i + 2000]] for i in range(0, len(recs), 2000)]
    old = load_baseline(baseline)
    pii.warm()  # as prep does before its workers start
    modules = {"this": pii, baseline: old}
    best = {name: float("inf") for name in modules}
    dropped = {}
    for _ in range(repeats):  # alternated, so a change in the machine's load hits both alike
        for name, module in modules.items():
            kinds = tuple(getattr(module, "DEFAULT_KINDS", module.KINDS))
            t = time.perf_counter()
            dropped[name] = pii_step(module, batches, kinds)
            best[name] = min(best[name], time.perf_counter() - t)
    out: dict[str, Any] = {"records": len(recs)}
    for name in modules:
        out[name] = {"records_per_s": round(len(recs) / best[name]), "dropped": dropped[name]}
    out["ratio"] = round(out["this"]["records_per_s"] / out[baseline]["records_per_s"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="cases per kind and per look-alike (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--records", type=int, default=100_000, help="firefly-like records for the throughput (100000)")
    ap.add_argument("--repeats", type=int, default=3, help="throughput: best of this many passes (3)")
    ap.add_argument("--baseline", default="main", help="git ref of the detector to compare speed with (main)")
    ap.add_argument("--out", help="results JSON (default bench/results/pii.json)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        q = quality(args.n, args.seed, Path(tmp))
    print_quality(q)
    speed = throughput(args.records, args.repeats, args.baseline)
    print(f"\nPII step on {speed['records']} firefly-like records: {speed['this']['records_per_s']} records/s, "
          f"{args.baseline}: {speed[args.baseline]['records_per_s']} records/s ({speed['ratio']}x)")
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / "pii.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quality": q, "throughput": speed}, indent=2, ensure_ascii=False))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
