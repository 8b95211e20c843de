#!/usr/bin/env python
"""Judge SFT records with several LLMs, keep the good ones, drop near-duplicates, split train/val.

Stages: score (ask every judge about every record; each verdict is appended to a journal keyed by record id,
judge name and prompt hash, so a rerun asks only for what is missing) and filter (recompute every decision
from the journal, dedup, split, write the outputs; no API call). `--stage all` (default) does both.

A record passes when it has at least min_votes valid verdicts ("votes"), its weighted score, recomputed
from the dimension scores, reaches min_score_threshold, and every per-dimension floor holds. A failed or
invalid verdict is retried, then counted as no vote (never as a 0).

Outputs in --output-dir: scored.jsonl (every record with each judge's scores, reasons and failures, keyed by
judge name), train.jsonl / val.jsonl (ShareGPT as seed 000 writes it, or --format), generated_raw.jsonl
(the input records as read), metadata.json (counts after each step, scores, judges, agreement, thresholds,
tokens and cost), and the journal judge_journal.jsonl.

Config: JSON deep-merged over the defaults (seed 000's CONFIG_TEMPLATE keys keep their meaning, `evaluators`
included); print the defaults with --print-config. A judge with `"local_model": "FOLDER_OR_HUB_ID"`
(serving settings under `"local_teacher": {...}`) is an open model the toolkit serves with vLLM on 127.0.0.1
for the scoring (one server per model, stopped on every exit path), asked for the verdict's JSON schema.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from sftkit.distill import judge_stage as js
from sftkit.distill import judging as jg
from sftkit.distill.judge_stage import OutputError, Plan, Setup
from sftkit.io.cli import ScriptParser, UsageError, interrupted, run_script
from sftkit.io.jsonl import BadLines, LockedError
from sftkit.llm.client import POLICY_DEFAULTS, Usage, add_policy_flags, estimate_tokens
from sftkit.llm.config import RedactFilter, dotenv
from sftkit.llm.local_teacher import TeacherError, TeacherPool
from sftkit.llm.pricing import estimate_cost
from sftkit.llm.runner import Job, JournaledRun

log = logging.getLogger("judge")


class FatalJudgeError(Exception):
    """A judge refused us (401/402/403/404, exhausted balance or quota): the run stops at once, exit 1."""


def build_parser() -> argparse.ArgumentParser:
    ap = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = ap.add_argument
    a("--input", help="records to judge: JSONL (.gz ok) of canonical records or any form SPEC lists")
    a("--output-dir", "--output", dest="output_dir", help="output directory (default: config output_dir, "
                                                          "./distilled_dataset)")
    a("--config", help="JSON config deep-merged over the defaults (see --print-config)")
    a("--print-config", action="store_true", help="print the effective config (keys removed) and exit")
    a("--slices", help="the knowledge slices JSONL the records were generated from; the judge prompt then shows "
                       "the full slice (found by meta.slice_id) instead of the excerpt stored in the record")
    a("--stage", choices=["all", "score", "filter"], default="all",
      help="all: score what is missing, then filter; score: only ask the judges; filter: only recompute "
           "filter/dedup/split from the journal, calling no API (default: %(default)s)")
    a("--format", choices=jg.FORMATS, default="sharegpt",
      help="train/val format: sharegpt (seed 000: id, conversations, avg_score, dimension_scores), firefly, "
           "alpaca, chatml (<|im_start|> text) (default: %(default)s)")
    a("--journal", help="verdict journal (default: OUTPUT_DIR/judge_journal.jsonl)")
    a("--judges", help="comma-separated judge names: use only these of the configured judges")
    a("--api-key", default="", help="API key for every judge (else each judge's api_key_env, default "
                                    "OPENAI_API_KEY, from the environment, then .env, then config). Never printed")
    a("--judge-key", action="append", default=[], metavar="NAME=KEY",
      help="API key for one judge (repeatable); wins over --api-key")
    a("--base-url", default="", help="base URL for every judge, overriding the config (e.g. a local vLLM server)")
    a("--min-score-threshold", type=float, help="weighted score a record needs (config default 7.0)")
    a("--min-votes", type=int, help="valid verdicts a record needs (config default 2)")
    a("--floor", action="append", default=[], metavar="DIM=X",
      help="per-dimension floor, e.g. safety=6 (repeatable; adds to config `floors`)")
    a("--train-val-split", type=float, help="share of kept records in train.jsonl (config default 0.9)")
    a("--seed", type=int, help="seed of the train/val shuffle (config default 42)")
    a("--no-dedup", action="store_true", help="skip near-duplicate removal (config enable_dedup)")
    a("--dedup-method", choices=["auto", "hf", "api", "ngram", "jieba", "none"],
      help="auto: hf if an encoder path is set, else api if an embeddings endpoint is set, else ngram; "
           "hf: local transformers/sentence-transformers encoder; api: OpenAI-compatible /v1/embeddings; "
           "ngram: MinHash over character n-grams; jieba: MinHash over jieba words")
    a("--dedup-threshold", type=float, help="similarity at which two records are duplicates: cosine for hf/api "
                                            "(config dedup.threshold, 0.92), Jaccard of shingles for ngram/jieba "
                                            "(config dedup.ngram.threshold, 0.7)")
    a("--encoder", help="local encoder directory for --dedup-method hf (config dedup.encoder_path)")
    a("--embed-base-url", help="OpenAI-compatible base URL for --dedup-method api (config dedup.api.base_url)")
    a("--embed-model", help="embedding model name for --dedup-method api (config dedup.api.model)")
    a("--retry-failed", action="store_true",
      help="ask again for verdicts journaled as failed or invalid (by default a rerun asks only for missing ones)")
    add_policy_flags(ap, defaults=False, scope="for every judge (config: per judge, or judge_defaults): ")
    a("--limit", type=int, default=0, help="only the first N readable records (0 = all)")
    a("--dry-run", action="store_true", help="print the plan, one judge prompt and a token/cost estimate; send nothing")
    a("--log", default="INFO", help="log level (default: %(default)s)")
    return ap


def _apply_flags(cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Flags win over the config; the result is what gets hashed and recorded."""
    if args.min_score_threshold is not None:
        cfg["min_score_threshold"] = args.min_score_threshold
    if args.min_votes is not None:
        cfg["min_votes"] = args.min_votes
    if args.train_val_split is not None:
        cfg["train_val_split"] = args.train_val_split
    if args.seed is not None:
        cfg["seed"] = args.seed
    for spec in args.floor:
        name, sep, value = spec.partition("=")
        try:
            cfg.setdefault("floors", {})[name.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--floor {spec!r}: expected DIM=NUMBER") from None
        if not sep:
            raise UsageError(f"--floor {spec!r}: expected DIM=NUMBER")
    if args.no_dedup:
        cfg["enable_dedup"] = False
    d = cfg["dedup"]
    if args.dedup_method:
        d["method"] = args.dedup_method
        cfg["enable_dedup"] = args.dedup_method != "none"
    if args.dedup_threshold is not None:
        d["threshold"] = args.dedup_threshold
        d.setdefault("ngram", {})["threshold"] = args.dedup_threshold
    if args.encoder:
        d["encoder_path"] = args.encoder
    if args.embed_base_url:
        d["api"]["base_url"] = args.embed_base_url
    if args.embed_model:
        d["api"]["model"] = args.embed_model
    if args.output_dir:
        cfg["output_dir"] = args.output_dir
    for key in POLICY_DEFAULTS:
        value = getattr(args, key)
        if value is not None:
            cfg["judge_defaults"][key] = value
            for j in cfg["judges"]:
                j[key] = value
    return cfg


def setup(argv: list[str] | None) -> Setup:
    args = build_parser().parse_args(argv)
    try:
        cfg = jg.load_config(args.config)
        cfg = _apply_flags(cfg, args)
        if args.print_config:
            print(orjson.dumps(jg.public_config(cfg), option=orjson.OPT_INDENT_2).decode())
            raise SystemExit(0)
        dims = jg.dimensions_from_config(cfg)
        rules = jg.rules_from_config(cfg, dims)
        split = float(cfg["train_val_split"])
        if not 0.0 <= split <= 1.0:
            raise UsageError("train_val_split must be within [0, 1]")
        int(cfg["seed"])
        if not args.input:
            raise UsageError("--input is required")
        if not Path(args.input).is_file():
            raise UsageError(f"{args.input}: no such file")
        if args.slices and not Path(args.slices).is_file():
            raise UsageError(f"--slices {args.slices}: no such file")
        if args.limit < 0:
            raise UsageError("--limit must be >= 0")
        judge_keys = {}
        for spec in args.judge_key:
            name, sep, key = spec.partition("=")
            if not sep or not name or not key:
                raise UsageError("--judge-key expects NAME=KEY")
            judge_keys[name] = key
        env_file = dotenv()
        only = [x.strip() for x in args.judges.split(",") if x.strip()] if args.judges else None
        calls_api = args.stage != "filter" and not args.dry_run
        cfg, note = jg.fallback_to_gen_endpoint(cfg, configured=jg.sets_judges(args.config), flag_key=args.api_key,
                                                judge_keys=judge_keys, env_file=env_file, need_keys=calls_api)
        if note:
            log.warning("%s", note)
            rules = jg.rules_from_config(cfg, dims)  # min_votes 1: one judge
        judges = jg.judges_from_config(cfg, flag_key=args.api_key, judge_keys=judge_keys, flag_base_url=args.base_url,
                                       env_file=env_file, only=only, need_keys=calls_api)
        if rules.min_votes > len(judges):
            raise UsageError(f"min_votes is {rules.min_votes} but only {len(judges)} judge(s) are configured: "
                             "no record could pass")
        dedup = js.resolve_dedup(cfg, env_file, need_keys=args.stage != "score" and not args.dry_run)
    except jg.ConfigError as e:
        raise UsageError(str(e)) from None
    except (TypeError, ValueError, KeyError) as e:
        raise UsageError(f"bad config value: {e}") from None
    out_dir = Path(cfg["output_dir"])
    journal_path = Path(args.journal) if args.journal else out_dir / "judge_journal.jsonl"
    secrets = [j.api_key for j in judges] + list(judge_keys.values()) + [args.api_key, dedup.get("api_key", "")]
    return Setup(args, cfg, dims, rules, judges, out_dir, journal_path, dedup, [s for s in secrets if s])


def dry_run(s: Setup, plan: Plan, pending: list[Job]) -> int:
    print(f"records: {len(plan.records)}   judges: {', '.join(f'{j.name} ({j.model})' for j in s.judges)}")
    print(f"verdicts to ask: {len(pending)} (the others are in the journal {s.journal_path})")
    if plan.records:
        print("---- judge prompt for record", plan.records[0]["id"], "----")
        for m in plan.messages(0):
            print(f"[{m['role']}]\n{m['content']}\n")
    for j in s.judges:
        mine = [job.data[0] for job in pending if job.target == j.name]
        tokens = sum(estimate_tokens("".join(m["content"] for m in plan.messages(i))) for i in mine)
        est = estimate_cost(j.model, Usage(prompt_tokens=tokens, completion_tokens=250 * len(mine)), j.price)
        cost = "unknown price" if est is None else f"~${est:.4f}"
        print(f"{j.name}: {len(mine)} verdicts, ~{tokens} prompt tokens, {cost} (at ~250 output tokens each)")
    return 0


def main(argv: list[str] | None = None, pool: TeacherPool | None = None) -> int:
    """`pool`: local judges' servers come from it (run_pipeline.py shares its generator's server this way)."""
    t0 = time.time()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        s = setup(argv)
    except UsageError as e:
        print(f"judge.py: {e}", file=sys.stderr)
        return 2
    redact = RedactFilter(s.secrets)
    for h in logging.getLogger().handlers:
        h.addFilter(redact)
    logging.getLogger().setLevel(s.args.log.upper())
    try:
        return run(s, t0, pool)
    except TeacherError as e:
        print(f"judge.py: {e}", file=sys.stderr)
        return e.exit_code
    except (UsageError, LockedError) as e:
        print(f"judge.py: {e}", file=sys.stderr)
        return 2
    except (FatalJudgeError, OutputError) as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (run_script): verdicts so far are journaled
        return interrupted(e)
    except Exception:
        log.exception("judge.py failed")
        return 1


def run(s: Setup, t0: float, pool: TeacherPool | None = None) -> int:
    args = s.args
    bad = BadLines(log)
    records = js.read_records(args.input, bad, args.limit)
    slices = js.read_slices(args.slices, bad)
    if not records:
        raise UsageError(f"{args.input}: no readable records ({bad.count} bad lines)")
    plan = js.make_plan(records, slices, s)
    if args.dry_run:  # reads the journal as it is: no lock, writes nothing, not even an empty journal
        view = JournaledRun(s.journal_path, js.KEY_FIELDS, read_only=True)
        return dry_run(s, plan, js.pending_verdicts(view, plan, s.judges, args.retry_failed))
    try:
        journal = JournaledRun(s.journal_path, js.KEY_FIELDS)  # the run lock: held until every output is written
    except OSError as e:
        raise OutputError(f"cannot write the journal {s.journal_path}: {e}") from None
    try:
        pending = js.pending_verdicts(journal, plan, s.judges, args.retry_failed)
        result = None
        if args.stage in ("all", "score") and pending:
            log.info("asking %d verdicts (%d already journaled)", len(pending),
                     len(records) * len(s.judges) - len(pending))
            with js.local_judges(s.judges, pool) as judges:  # local servers run for the scoring only
                result = js.score(journal, pending, plan, judges, int(s.cfg["seed"]))
            if result.write_error:
                raise OutputError(f"{result.write_error}; the journal keeps every verdict before it: make room "
                                  "and rerun the same command")
            if result.fatal:
                raise FatalJudgeError(f"{result.fatal} (verdicts so far are journaled)")
        costs = js.judge_costs(s.judges, result, journal)
        if args.stage == "score":
            js.print_score_summary(s, records, pending, result, costs, bad, t0)
        else:
            meta = js.filter_and_write(s, plan, journal.index(), costs, bad, t0, result)
            print(js.summary(meta, s.out_dir))
    finally:
        journal.close()
    down = result.down() if result is not None else {}
    for name, line in down.items():
        log.error("%s; %d verdict(s) not asked: rerun the same command to ask only those", line,
                  result.targets[name].not_journaled)  # type: ignore[union-attr]
    return 1 if down else 0


if __name__ == "__main__":
    sys.exit(run_script(main))
