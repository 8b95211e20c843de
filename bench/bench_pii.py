"""PII detection through prep's CLI, judged by outside oracles: recall per kind, false positives per look-alike,
and the throughput of the PII step against the previous detector in the same run.

    python bench/bench_pii.py [--n 2000] [--baseline main]

1. Cases from tests/pii_cases.py: for every kind, --n values each accepted by its oracle (python-stdnum for IDs
   and Luhn, phonenumbers for mobile and fixed-line numbers, ipaddress for IPv4/IPv6), glued into Chinese text
   (against Han characters, after a full-width colon, in brackets, at line ends, glued to Latin letters, with and
   without a context word, a card followed by another number); for every look-alike (IDs with a wrong check
   digit, Luhn-invalid numbers, order numbers, random 15-digit numbers, timestamps, dates, versions, clock
   times), --n values each refused by its oracle. Each goes into the answer of one record long and Chinese
   enough to pass every other filter.
2. prep_sft_firefly_hit.py --drop-pii --pii-kinds (every kind) --no-dedup on them: a positive is found when its
   record is dropped, a look-alike is a false positive when its record is dropped. Then --redact-pii: found
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


def quality(n: int, seed: int, work: Path) -> dict[str, Any]:
    rng = random.Random(seed)
    rows, labels = [], []  # labels: (kind or look-alike name, positive?, exact value)
    for kind in pii.KINDS:
        for _ in range(n):
            text, value = pii_cases.case(rng, kind)
            rows.append(record(rng, text))
            labels.append((kind, True, value))
    for name in sorted(pii_cases.LOOKALIKES):
        for _ in range(n):
            rows.append(record(rng, pii_cases.lookalike(rng, name)))
            labels.append((name, False, ""))
    ids = [fast_record(r, "firefly")["id"] for r in rows]
    every = ",".join(pii.KINDS)
    kept_drop = run_prep(rows, work, "drop", "--drop-pii", "--pii-kinds", every)
    kept_redact = run_prep(rows, work, "redact", "--redact-pii", "--pii-kinds", every)
    kept_default = run_prep([r for r, lab in zip(rows, labels, strict=True) if lab[0] == "landline"], work,
                            "default", "--drop-pii")
    if len(kept_redact) != len(rows):
        raise SystemExit(f"prep kept {len(kept_redact)} of {len(rows)} records with --redact-pii: another filter "
                         "dropped some, so the cases do not measure PII alone")
    out: dict[str, Any] = {"kinds": {}, "lookalikes": {}}
    for kind in pii.KINDS:
        mine = [(i, lab) for i, lab in enumerate(labels) if lab[0] == kind]
        dropped = sum(ids[i] not in kept_drop for i, _ in mine)
        exact = 0
        for i, (_, _, value) in mine:
            answer = kept_redact[ids[i]]["messages"][1]["content"]
            original = normalize_text(rows[i]["output"])  # what the PII step saw (prep normalises first)
            exact += answer == original.replace(normalize_text(value), pii.TOKENS[kind], 1)
        row = {"n": len(mine), "recall": round(dropped / len(mine), 4), "exact_span_and_kind": round(exact / len(mine),
                                                                                                    4)}
        if kind == "landline":
            row["recall_with_default_kinds"] = round(1 - len(kept_default) / len(mine), 4)
        out["kinds"][kind] = row
    for name in sorted(pii_cases.LOOKALIKES):
        mine = [i for i, lab in enumerate(labels) if lab[0] == name]
        fp = sum(ids[i] not in kept_drop for i in mine)
        out["lookalikes"][name] = {"n": len(mine), "false_positive_rate": round(fp / len(mine), 4)}
    return out


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
    print(f"{'kind':<36}{'n':>6}{'recall':>9}{'exact':>8}")
    for kind, r in q["kinds"].items():
        extra = f"  (default kinds: {r['recall_with_default_kinds']:.4f}, off by default)" if kind == "landline" else ""
        print(f"{kind:<36}{r['n']:>6}{r['recall']:>9.4f}{r['exact_span_and_kind']:>8.4f}{extra}")
    print(f"\n{'look-alike':<36}{'n':>6}{'false positive rate':>21}")
    for name, r in q["lookalikes"].items():
        print(f"{name:<36}{r['n']:>6}{r['false_positive_rate']:>21.4f}")
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
