#!/usr/bin/env python3
"""One self-contained HTML data report of what every stage did: built from the stats JSON files the stages write
and from their data files (figures embedded as PNG, no external link: it opens offline).

    python report.py --out data/report.html            # the Makefile's default paths (make report)
    python report.py --distill-dir data/distilled --tokenizer openbmb/MiniCPM4-0.5B --out data/report.html

Sections: the funnel of `make data` (topics -> generated -> valid -> prep filters -> exact and near dedup -> val
split -> mix -> converted) and of `make distill` (documents -> slices -> generated -> valid -> judged -> passed ->
deduplicated -> train/val), with each drop's reason and count; message lengths per role before and after (characters,
and tokens with --tokenizer); score distributions per judge and dimension and judge agreement; near-duplicate and
personal-data counts by kind; tokens and cost per stage; the mix's achieved shares against those asked; a few sample
records per stage. A stage that was not run is shown as "not run"; a stats file from an older version that lacks a
field gives a note, not an error. The same figures go to a JSON file beside the HTML (OUT with .json).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from sftkit.io.cli import ScriptParser, run_script
from sftkit.io.jsonl import atomic_write, write_json
from sftkit.report import html
from sftkit.report.build import build
from sftkit.report.load import Inputs, load, token_counter


def build_parser() -> argparse.ArgumentParser:
    d = Inputs()
    ap = ScriptParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                      resumable=False)
    a = ap.add_argument
    a("--slices", default=str(d.slices),
      help="slice_docs.py output; its stats JSON sits beside it (default %(default)s)")
    a("--gen", default=str(d.gen), help="gen_SFT_data.py output of make data; its .stats.json and .rejects.jsonl sit "
                                        "beside it (default %(default)s)")
    a("--prep", default=str(d.prep), help="prep_sft_firefly_hit.py --out (the mixed set); its stats JSON sits beside "
                                          "it, and its val / domain outputs are found from the stats (default "
                                          "%(default)s)")
    a("--prep-stats", help="prep's stats JSON when it is not beside --prep (prep --stats)")
    a("--convert", nargs="*", default=[str(p) for p in d.convert],
      help="chatml2conversation.py outputs (their .stats.json beside them) (default: make convert's three files)")
    a("--distill-dir", default=str(d.distill), help="make distill / judge.py output directory: generated.jsonl + "
                                                    "stats, metadata.json, scored.jsonl, train/val (default "
                                                    "%(default)s)")
    a("--tokenizer", help="tokenizer.json file or Hugging Face tokenizer folder / hub id: lengths in tokens as well")
    a("--samples", type=int, default=3, help="sample records shown per stage (default %(default)s)")
    a("--seed", type=int, default=0, help="seed of the sample draw (default %(default)s)")
    a("--max-records", type=int, default=200000,
      help="read at most this many records of each data file for lengths, samples and counted shares (0 = all; "
           "the stats files' counts are always complete) (default %(default)s)")
    a("--no-figures", action="store_true", help="tables only (no matplotlib)")
    a("--out", default="data/report.html", help="the HTML report (written atomically) (default %(default)s)")
    a("--json", help="the report's figures as JSON (default: OUT with .json instead of .html)")
    return ap


def for_json(model: dict[str, Any]) -> dict[str, Any]:
    """The model without the per-message arrays (the summaries stay): a JSON of the same figures as the page."""
    out = dict(model)
    out["lengths"] = [{"chain": c["chain"], "sets": [{k: v for k, v in s.items() if k not in ("chars", "tokens")}
                                                     for s in c["sets"]]} for c in model["lengths"]]
    if model["scores"] is not None:
        out["scores"] = {k: v for k, v in model["scores"].items() if k not in ("per_dimension", "weighted", "pairs",
                                                                               "avg_scores")}
    if model["dedup_pii"].get("judge"):
        out["dedup_pii"] = {**model["dedup_pii"], "judge": {k: v for k, v in model["dedup_pii"]["judge"].items()
                                                            if k != "similarities"}}
    return out


def print_summary(model: dict[str, Any], out: Path, json_path: Path, seconds: float) -> None:
    print(f"report: {out} ({out.stat().st_size / 1024:.0f} KiB, {seconds:.1f}s); figures as JSON: {json_path}")
    for f in model["funnels"]:
        if not f["steps"]:
            print(f"  {f['name']}: not run")
            continue
        first, last = f["steps"][0], f["steps"][-1]
        print(f"  {f['name']}: {first['label']} {first['count']} ... {last['label']} {last['count']} "
              f"({len(f['steps'])} steps; stages {', '.join(f'{k} {v}' for k, v in f['stages'].items())})")
    cost = [r["cost_usd"] for r in model["costs"]]
    if cost:
        total = f"${sum(cost):.4f}" if all(c is not None for c in cost) else "not every price known"
        print(f"  LLM cost, all runs: {total}")
    for n in model["notes"]:
        print(f"  note: {n}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.samples < 0 or args.max_records < 0:
        print("report.py: --samples and --max-records must be >= 0", file=sys.stderr)
        return 2
    tokens = None
    if args.tokenizer:
        try:
            tokens = token_counter(args.tokenizer)
        except Exception as e:  # a wrong path or id: said in one line before anything is read
            print(f"report.py: --tokenizer {args.tokenizer}: cannot be loaded ({type(e).__name__}: {e})",
                  file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    inputs = Inputs(slices=Path(args.slices), gen=Path(args.gen), prep=Path(args.prep),
                    convert=[Path(p) for p in args.convert], distill=Path(args.distill_dir),
                    prep_stats=Path(args.prep_stats) if args.prep_stats else None)
    loaded = load(inputs, limit=args.max_records)
    model = build(loaded, tokens, k_samples=args.samples, seed=args.seed, tokenizer=args.tokenizer)
    page = html.render(model, with_figures=not args.no_figures)
    out = Path(args.out)
    json_path = Path(args.json) if args.json else out.with_suffix(".json")
    try:
        with atomic_write(out, "w") as f:
            f.write(page)
        write_json(json_path, for_json(model))
    except OSError as e:
        print(f"report.py: cannot write {out}: {e}", file=sys.stderr)
        return 1
    print_summary(model, out, json_path, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, resumable=False))
