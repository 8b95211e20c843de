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
included); print the defaults with --print-config. Exit 0 done, 2 bad usage or impossible input, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
from tqdm import tqdm

from sftkit.distill import judging as jg
from sftkit.io.jsonl import BadLines, Journal, JournalWriteError, LockedError, iter_jsonl, write_json, write_jsonl
from sftkit.io.records import RecordError, to_record
from sftkit.llm.client import POLICY_DEFAULTS, AsyncChatClient, ChatError, Usage, add_policy_flags, policy_kwargs
from sftkit.llm.config import RedactFilter, dotenv, is_local_url, resolve
from sftkit.llm.pricing import estimate_cost

log = logging.getLogger("judge")


class UsageError(Exception):
    """Bad usage or input that makes the run impossible: exit 2."""


class OutputError(Exception):
    """The journal or an output cannot be written (full disk, unwritable directory): exit 1."""


class FatalJudgeError(Exception):
    """A judge refused us (401/402/403/404, exhausted balance or quota): the run stops at once, exit 1."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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


@dataclass
class Setup:
    args: argparse.Namespace
    cfg: dict[str, Any]
    dims: list[jg.Dimension]
    rules: jg.Rules
    judges: list[jg.JudgeSpec]
    out_dir: Path
    journal_path: Path
    dedup: dict[str, Any]
    secrets: list[str] = field(default_factory=list)


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


def resolve_dedup(cfg: dict[str, Any], env_file: dict[str, str], need_keys: bool) -> dict[str, Any]:
    """The dedup plan, checked before any money is spent: {"method": ..., plus what that method needs}."""
    d = cfg["dedup"]
    if not cfg.get("enable_dedup", True) or d.get("method") == "none":
        return {"method": "none"}
    method = d.get("method", "auto")
    api = d.get("api") or {}
    if method == "auto":
        method = "hf" if d.get("encoder_path") else "api" if api.get("base_url") and api.get("model") else "ngram"
    if method not in ("hf", "api", "ngram", "jieba"):
        raise UsageError(f"dedup.method {method!r}: expected auto, hf, api, ngram, jieba or none")
    plan: dict[str, Any] = {"method": method, "block_size": int(d.get("block_size", 1024))}
    if method in ("hf", "api"):
        plan["threshold"] = float(d.get("threshold", 0.92))
        if not -1.0 <= plan["threshold"] <= 1.0:
            raise UsageError("dedup threshold (cosine) must be within [-1, 1]")
    if method == "hf":
        path = d.get("encoder_path") or ""
        if not path or not Path(path, "config.json").is_file():
            raise UsageError(f"dedup encoder {path!r} is not a model directory (no config.json); "
                             "set dedup.encoder_path / --encoder, or use --dedup-method ngram")
        plan.update(path=path, max_length=int(d.get("max_length", 256)), batch_size=int(d.get("batch_size", 32)),
                    device=str(d.get("device", "cpu")))
    elif method == "api":
        if not api.get("base_url") or not api.get("model"):
            raise UsageError("dedup method api needs dedup.api.base_url and dedup.api.model "
                             "(--embed-base-url, --embed-model)")
        key = resolve(None, env_file, str(api.get("api_key_env") or "OPENAI_API_KEY"), api.get("api_key") or None)
        if need_keys and not key and not is_local_url(api["base_url"]):
            raise UsageError(f"embeddings endpoint {api['base_url']} has no API key: set "
                             f"{api.get('api_key_env') or 'OPENAI_API_KEY'} or dedup.api.api_key")
        plan.update(base_url=api["base_url"], model=api["model"], api_key=key,
                    batch_size=int(api.get("batch_size", 64)), max_concurrency=int(api.get("max_concurrency", 4)))
    else:
        ng = d.get("ngram") or {}
        plan.update(tokenizer="jieba" if method == "jieba" else str(ng.get("tokenizer", "char")),
                    n=int(ng.get("n", 3 if method == "ngram" else 1)), threshold=float(ng.get("threshold", 0.7)),
                    num_perm=int(ng.get("num_perm", 128)), bands=int(ng.get("bands", 32)))
        if method == "jieba" and "n" not in ng:
            plan["n"] = 1
        if plan["num_perm"] % plan["bands"]:
            raise UsageError("dedup.ngram.num_perm must be a multiple of dedup.ngram.bands")
    plan["text"] = str(d.get("text", "all"))
    if plan["text"] not in ("all", "prompt"):
        raise UsageError("dedup.text must be 'all' (user and assistant turns) or 'prompt' (user turns)")
    return plan


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
        judges = jg.judges_from_config(cfg, flag_key=args.api_key, judge_keys=judge_keys, flag_base_url=args.base_url,
                                       env_file=env_file, only=only, need_keys=calls_api)
        if rules.min_votes > len(judges):
            raise UsageError(f"min_votes is {rules.min_votes} but only {len(judges)} judge(s) are configured: "
                             "no record could pass")
        dedup = resolve_dedup(cfg, env_file, need_keys=args.stage != "score" and not args.dry_run)
    except jg.ConfigError as e:
        raise UsageError(str(e)) from None
    except (TypeError, ValueError, KeyError) as e:
        raise UsageError(f"bad config value: {e}") from None
    out_dir = Path(cfg["output_dir"])
    journal_path = Path(args.journal) if args.journal else out_dir / "judge_journal.jsonl"
    secrets = [j.api_key for j in judges] + list(judge_keys.values()) + [args.api_key, dedup.get("api_key", "")]
    return Setup(args, cfg, dims, rules, judges, out_dir, journal_path, dedup, [s for s in secrets if s])


# ---- input ---------------------------------------------------------------------------------------------------


def read_records(path: str, bad: BadLines, limit: int) -> list[dict[str, Any]]:
    """Canonical records; unreadable lines and repeated ids are reported `file:line: reason` and skipped."""
    stem = Path(path).name.split(".")[0]
    records: list[dict[str, Any]] = []
    first_line: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path, bad):
        try:
            rec = to_record(obj, source=stem, rid=f"{stem}-{lineno}")
        except RecordError as e:
            bad.add(path, lineno, str(e))
            continue
        if rec["id"] in first_line:
            bad.add(path, lineno, f"duplicate id {rec['id']!r} (first at line {first_line[rec['id']]})")
            continue
        first_line[rec["id"]] = lineno
        records.append(rec)
        if limit and len(records) >= limit:
            break
    return records


def read_slices(path: str | None, bad: BadLines) -> dict[str, str]:
    if not path:
        return {}
    from sftkit.distill.generation import read_slices as read_slice_file

    return {s["id"]: s["content"] for s in read_slice_file(path, bad)}


# ---- scoring --------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """Per record: the judge prompt is the same for every judge; the hash also covers the judge's model."""

    records: list[dict[str, Any]]
    slices: dict[str, str]
    dims: list[jg.Dimension]
    rules: jg.Rules
    max_slice_chars: int
    hashes: list[dict[str, str]]  # per record: judge name -> prompt hash

    def messages(self, i: int) -> list[dict[str, str]]:
        rec = self.records[i]
        text, kind = jg.slice_text_for(rec, self.slices, self.max_slice_chars)
        return jg.build_judge_messages(rec, self.dims, self.rules.scale, text, kind)


def make_plan(records: list[dict[str, Any]], slices: dict[str, str], s: Setup) -> Plan:
    max_chars = int((s.cfg.get("judge_defaults") or {}).get("max_slice_chars", 8000))
    plan = Plan(records, slices, s.dims, s.rules, max_chars, [])
    for i in range(len(records)):
        msgs = plan.messages(i)
        plan.hashes.append({j.name: jg.prompt_hash(j.model, msgs) for j in s.judges})
    return plan


def journal_index(entries: list[Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(record id, judge name, prompt hash) -> the latest entry."""
    index = {}
    for e in entries:
        if isinstance(e, dict) and {"rid", "judge", "ph"} <= e.keys():
            index[(e["rid"], e["judge"], e["ph"])] = e
    return index


def pending_verdicts(plan: Plan, judges: list[jg.JudgeSpec], index: dict[tuple[str, str, str], dict[str, Any]],
                     retry_failed: bool) -> list[tuple[int, jg.JudgeSpec]]:
    """(record index, judge) for every verdict not in the journal (and failed ones with --retry-failed)."""
    pending = []
    for i, rec in enumerate(plan.records):
        for j in judges:
            e = index.get((rec["id"], j.name, plan.hashes[i][j.name]))
            if e is None or (retry_failed and not e.get("ok")):
                pending.append((i, j))
    return pending


async def judge_one(client: AsyncChatClient, judge: jg.JudgeSpec, plan: Plan, i: int) -> dict[str, Any] | None:
    """One verdict: ask, parse, and on an invalid answer ask again (showing the judge what was wrong).
    None when the verdict was not obtained because the judge's endpoint is down, refused us, or was stopped:
    nothing is journaled for it, so a rerun asks for it again."""
    rec = plan.records[i]
    base = plan.messages(i)
    messages = base
    usage = Usage()
    attempts = 0
    entry: dict[str, Any] = {"rid": rec["id"], "judge": judge.name, "ph": plan.hashes[i][judge.name],
                             "model": judge.model}
    last: jg.VerdictError | None = None
    raw = ""
    for _ in range(judge.verdict_retries + 1):
        try:
            r = await client.chat(messages, model=judge.model, temperature=judge.temperature,
                                  max_tokens=judge.max_tokens, json_mode=judge.json_mode, extra=judge.extra)
        except ChatError as e:
            if e.fatal or not e.sent or client.failure is not None:
                return None
            attempts += e.attempts
            entry.update(ok=False, error=f"request:{e.reason}", detail=e.detail[:300], attempts=attempts,
                         usage=usage.as_dict(), ts=time.time())
            return entry
        attempts += r.attempts
        usage.add(r.usage)
        raw = r.content
        try:
            verdict = jg.parse_verdict(r.content, plan.dims, plan.rules.scale)
        except jg.VerdictError as e:
            last = e
            messages = jg.retry_messages(base, r.content, str(e), plan.dims, plan.rules.scale)
            continue
        entry.update(ok=True, scores=verdict.scores, reasons=verdict.reasons, attempts=attempts,
                     usage=usage.as_dict(), ts=time.time())
        return entry
    assert last is not None
    entry.update(ok=False, error=f"invalid:{last.reason}", detail=str(last)[:300], raw=raw[:500], attempts=attempts,
                 usage=usage.as_dict(), ts=time.time())
    return entry


@dataclass
class ScoreRun:
    asked: Counter[str] = field(default_factory=Counter)
    votes: Counter[str] = field(default_factory=Counter)
    failures: dict[str, Counter[str]] = field(default_factory=dict)
    client_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    usage: dict[str, Usage] = field(default_factory=dict)
    down: dict[str, str] = field(default_factory=dict)  # judge name -> why its endpoint is down (one line)
    not_asked: Counter[str] = field(default_factory=Counter)  # verdicts left unasked, per judge
    fatal: str = ""  # a judge refused us: the whole run stops sending
    write_error: str = ""  # the journal could not be written: the whole run stops sending


async def score(pending: list[tuple[int, jg.JudgeSpec]], plan: Plan, judges: list[jg.JudgeSpec],
                journal: Journal, seed: int) -> ScoreRun:
    """Ask every pending verdict, each judge under its own endpoint policy, journaling each as it comes.
    A judge whose endpoint goes down gets nothing more sent; the others go on. A refused key or a journal
    that cannot be written stops every judge: requests in flight finish, nothing new is sent."""
    run = ScoreRun(failures={j.name: Counter() for j in judges}, usage={j.name: Usage() for j in judges})
    queues: dict[str, asyncio.Queue[int]] = {j.name: asyncio.Queue() for j in judges}
    for i, j in pending:
        queues[j.name].put_nowait(i)
    bar = tqdm(total=len(pending), unit="verdict", desc="judging", disable=None, dynamic_ncols=True)
    failed = 0
    clients: dict[str, AsyncChatClient] = {}

    def stop_all(why: str) -> None:
        for c in clients.values():
            c.stop(why)

    async def worker(judge: jg.JudgeSpec, client: AsyncChatClient) -> None:
        nonlocal failed
        q = queues[judge.name]
        while True:
            try:
                i = q.get_nowait()
            except asyncio.QueueEmpty:
                return
            entry = await judge_one(client, judge, plan, i)
            bar.update(1)
            if entry is None:
                run.not_asked[judge.name] += 1
                f = client.failure
                if f is not None and f.kind == "fatal" and not run.fatal:
                    run.fatal = f.line()
                    stop_all(f"judge {judge.name!r} refused the request")
                continue
            try:
                journal.append(entry)
            except JournalWriteError as e:
                run.not_asked[judge.name] += 1
                if not run.write_error:
                    run.write_error = str(e)
                    stop_all("the journal cannot be written")
                continue
            run.asked[judge.name] += 1
            run.usage[judge.name].add(Usage(**entry["usage"]))
            if entry["ok"]:
                run.votes[judge.name] += 1
            else:
                failed += 1
                run.failures[judge.name][entry["error"]] += 1
                bar.set_postfix(failed=failed, refresh=False)

    async with contextlib.AsyncExitStack() as stack:
        tasks = []
        for j in judges:
            n = queues[j.name].qsize()
            if not n:
                continue
            client = await stack.enter_async_context(AsyncChatClient(
                j.base_url, j.api_key, max_concurrency=j.max_concurrency, timeout=j.timeout, retries=j.retries,
                seed=seed, name=f"judge {j.name!r} ({j.model} at {j.base_url})", **policy_kwargs(j.policy)))
            clients[j.name] = client
            tasks += [asyncio.create_task(worker(j, client)) for _ in range(min(j.max_concurrency, n))]
        try:
            if tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for t in done:
                    if t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            bar.close()
            run.client_stats = {name: c.stats.as_dict() for name, c in clients.items()}
            run.down = {name: c.failure.line() for name, c in clients.items()
                        if c.failure is not None and c.failure.kind == "down"}
    return run


# ---- filtering ------------------------------------------------------------------------------------------------


@dataclass
class Judged:
    votes: list[dict[str, dict[str, float]]]  # per record: judge -> scores (valid verdicts only)
    detail: list[dict[str, dict[str, Any]]]  # per record: judge -> what scored.jsonl shows
    decisions: list[jg.Decision]


def collect(plan: Plan, judges: list[jg.JudgeSpec], index: dict[tuple[str, str, str], dict[str, Any]],
            rules: jg.Rules, down: set[str] | frozenset[str] = frozenset()) -> Judged:
    """Votes and decisions from the journal. A verdict never obtained is `missing`, or `endpoint_down` when
    its judge's endpoint went down in this run: either way no vote, never a 0."""
    weights = {j.name: j.weight for j in judges}
    out = Judged([], [], [])
    for i, rec in enumerate(plan.records):
        votes: dict[str, dict[str, float]] = {}
        detail: dict[str, dict[str, Any]] = {}
        for j in judges:
            e = index.get((rec["id"], j.name, plan.hashes[i][j.name]))
            if e is not None and e.get("ok") and not all(d.name in (e.get("scores") or {}) for d in plan.dims):
                e = None  # a hand-edited or foreign entry: treat as never asked
            if e is None:
                detail[j.name] = {"model": j.model, "status": "endpoint_down" if j.name in down else "missing"}
            elif e.get("ok"):
                scores = {d.name: float(e["scores"][d.name]) for d in plan.dims}
                votes[j.name] = scores
                detail[j.name] = {"model": j.model, "status": "vote",
                                  "score": round(jg.weighted_score(scores, plan.dims), 4),
                                  "scores": scores, "reasons": e.get("reasons") or {}}
            else:
                detail[j.name] = {"model": j.model, "status": "failed", "error": e.get("error"),
                                  "detail": e.get("detail"), "attempts": e.get("attempts")}
        out.votes.append(votes)
        out.detail.append(detail)
        out.decisions.append(jg.decide(votes, weights, plan.dims, rules))
    return out


Dropped = dict[int, tuple[int, float]]  # dropped record index -> (index of the kept duplicate, similarity)


def run_dedup(records: list[dict[str, Any]], order: list[int], plan: dict[str, Any]) -> tuple[Dropped, dict[str, Any]]:
    """Dedup the records at `order` (already sorted best first). Returns {dropped index: (kept index, sim)}."""
    from sftkit.distill import semdedup as sd

    texts = [jg.dedup_text(records[i], plan["text"]) for i in order]
    bar = tqdm(total=len(texts), unit="rec", desc=f"dedup ({plan['method']})", disable=None, dynamic_ncols=True)
    info: dict[str, Any] = {k: v for k, v in plan.items() if k != "api_key"}
    try:
        if plan["method"] == "hf":
            enc: Any = sd.HFEncoder(plan["path"], max_length=plan["max_length"], batch_size=plan["batch_size"],
                                    device=plan["device"])
            res = sd.cosine_dedup(texts, enc, plan["threshold"], block_size=plan["block_size"], progress=bar.update)
        elif plan["method"] == "api":
            enc = sd.APIEncoder(plan["base_url"], plan["model"], plan["api_key"], batch_size=plan["batch_size"],
                                max_concurrency=plan["max_concurrency"])
            res = sd.cosine_dedup(texts, enc, plan["threshold"], block_size=plan["block_size"], progress=bar.update)
            info.update(requests=enc.requests, tokens=enc.usage_tokens)
        else:
            res = sd.ngram_dedup(texts, tokenizer=plan["tokenizer"], n=plan["n"], threshold=plan["threshold"],
                                 num_perm=plan["num_perm"], bands=plan["bands"], progress=bar.update)
    finally:
        bar.close()
    dropped = {order[k]: (order[res.duplicate_of[k]], float(res.similarity[k]))  # type: ignore[index,arg-type]
               for k in range(len(order)) if not res.keep[k]}
    info.update(res.stats, removed=len(dropped), encoder=res.method)
    return dropped, info


def split_train_val(ids: list[str], share: float, seed: int) -> tuple[set[str], set[str]]:
    """Seeded split, independent of input order: sort ids, shuffle with the seed, cut. At least one record
    goes to train when share > 0, and one to val when share < 1 and there are two or more."""
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    n = len(order)
    n_train = math.floor(n * share + 1e-9)
    if n and share > 0:
        n_train = max(n_train, 1)
    if n >= 2 and share < 1:
        n_train = min(n_train, n - 1)
    return set(order[:n_train]), set(order[n_train:])


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def score_block(decisions: list[jg.Decision], dims: list[jg.Dimension]) -> dict[str, Any]:
    ds = [d for d in decisions if d.score is not None]
    return {"n": len(ds), "mean": _mean([d.score for d in ds]),  # type: ignore[misc]
            "dimension_means": {dim.name: _mean([d.dimension_means[dim.name] for d in ds]) for dim in dims}}


# ---- main -----------------------------------------------------------------------------------------------------


def judge_costs(judges: list[jg.JudgeSpec], run: ScoreRun | None, journal_entries: list[Any]) -> list[dict[str, Any]]:
    """Tokens and estimated USD per judge: this run, and all runs recorded in the journal."""
    total: dict[str, Usage] = {j.name: Usage() for j in judges}
    for e in journal_entries:
        if isinstance(e, dict) and e.get("judge") in total and isinstance(e.get("usage"), dict):
            total[e["judge"]].add(Usage(**{k: int(v) for k, v in e["usage"].items() if k in Usage().__dict__}))
    out = []
    for j in judges:
        this = run.usage[j.name] if run else Usage()
        cost_now = estimate_cost(j.model, this, j.price)
        cost_all = estimate_cost(j.model, total[j.name], j.price)
        out.append({**j.public(), "requests_this_run": (run.client_stats.get(j.name, {}).get("requests", 0)
                                                         if run else 0),
                    "verdicts_this_run": run.asked[j.name] if run else 0,
                    "tokens_this_run": this.as_dict(),
                    "cost_usd_this_run": None if cost_now is None else round(cost_now, 6),
                    "tokens_all_runs": total[j.name].as_dict(),
                    "cost_usd_all_runs": None if cost_all is None else round(cost_all, 6),
                    "client": run.client_stats.get(j.name) if run else None})
    return out


def dry_run(s: Setup, plan: Plan, pending: list[tuple[int, jg.JudgeSpec]]) -> int:
    from sftkit.distill.generation import estimate_tokens

    print(f"records: {len(plan.records)}   judges: {', '.join(f'{j.name} ({j.model})' for j in s.judges)}")
    print(f"verdicts to ask: {len(pending)} (the others are in the journal {s.journal_path})")
    if plan.records:
        print("---- judge prompt for record", plan.records[0]["id"], "----")
        for m in plan.messages(0):
            print(f"[{m['role']}]\n{m['content']}\n")
    for j in s.judges:
        mine = [i for i, jj in pending if jj.name == j.name]
        tokens = sum(estimate_tokens("".join(m["content"] for m in plan.messages(i))) for i in mine)
        est = estimate_cost(j.model, Usage(prompt_tokens=tokens, completion_tokens=250 * len(mine)), j.price)
        cost = "unknown price" if est is None else f"~${est:.4f}"
        print(f"{j.name}: {len(mine)} verdicts, ~{tokens} prompt tokens, {cost} (at ~250 output tokens each)")
    return 0


def main(argv: list[str] | None = None) -> int:
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
        return run(s, t0)
    except (UsageError, LockedError) as e:
        print(f"judge.py: {e}", file=sys.stderr)
        return 2
    except (FatalJudgeError, OutputError) as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; verdicts so far are journaled, rerun the same command to resume")
        return 1
    except Exception:
        log.exception("judge.py failed")
        return 1


def run(s: Setup, t0: float) -> int:
    args = s.args
    bad = BadLines(log)
    records = read_records(args.input, bad, args.limit)
    slices = read_slices(args.slices, bad)
    if not records:
        raise UsageError(f"{args.input}: no readable records ({bad.count} bad lines)")
    plan = make_plan(records, slices, s)
    if args.dry_run:  # reads the journal as it is: no lock, writes nothing, not even an empty journal
        index = journal_index(Journal.read(s.journal_path))
        return dry_run(s, plan, pending_verdicts(plan, s.judges, index, args.retry_failed))
    try:
        journal = Journal(s.journal_path)  # the run lock: held until every output is written
    except OSError as e:
        raise OutputError(f"cannot write the journal {s.journal_path}: {e}") from None
    try:
        index = journal_index(journal.entries)
        pending = pending_verdicts(plan, s.judges, index, args.retry_failed)
        score_run: ScoreRun | None = None
        if args.stage in ("all", "score") and pending:
            log.info("asking %d verdicts (%d already journaled)", len(pending),
                     len(records) * len(s.judges) - len(pending))
            score_run = asyncio.run(score(pending, plan, s.judges, journal, int(s.cfg["seed"])))
            index = journal_index(journal.entries)
            if score_run.write_error:
                raise OutputError(f"{score_run.write_error}; the journal keeps every verdict before it: make room "
                                  "and rerun the same command")
            if score_run.fatal:
                raise FatalJudgeError(f"{score_run.fatal} (verdicts so far are journaled)")
        costs = judge_costs(s.judges, score_run, journal.entries)
        if args.stage == "score":
            print_score_summary(s, records, pending, score_run, costs, bad, t0)
        else:
            filter_and_write(s, plan, index, costs, bad, t0, score_run)
    finally:
        journal.close()
    if score_run is not None and score_run.down:
        for name, line in score_run.down.items():
            log.error("%s; %d verdict(s) not asked: rerun the same command to ask only those", line,
                      score_run.not_asked[name])
        return 1
    return 0


@contextlib.contextmanager
def writing(s: Setup) -> Iterator[None]:
    """An output that cannot be written (full disk, unwritable directory) is one line, exit 1."""
    try:
        yield
    except OSError as e:
        raise OutputError(f"cannot write the outputs in {s.out_dir}: {e}; the verdicts are journaled in "
                          f"{s.journal_path}: make room and rerun the same command") from None


def filter_and_write(s: Setup, plan: Plan, index: dict[tuple[str, str, str], dict[str, Any]],
                     costs: list[dict[str, Any]], bad: BadLines, t0: float, score_run: ScoreRun | None) -> int:
    records, dims, rules = plan.records, s.dims, s.rules
    judged = collect(plan, s.judges, index, rules, set(score_run.down) if score_run else set())
    decisions = judged.decisions
    removed: Counter[str] = Counter()
    for d in decisions:
        removed.update(r for r in d.fail_reasons if r != "no_votes")
        if "no_votes" in d.fail_reasons:
            removed["too_few_votes"] += 1
    passed = [i for i, d in enumerate(decisions) if d.passed]
    # Best first, so of two duplicates the higher-scored one stays; input order breaks ties.
    order = sorted(passed, key=lambda i: (-(decisions[i].score or 0.0), i))
    dropped: dict[int, tuple[int, float]] = {}
    dedup_info: dict[str, Any] = {"method": "none", "removed": 0}
    if s.dedup["method"] != "none" and len(order) > 1:
        dropped, dedup_info = run_dedup(records, order, s.dedup)
    elif s.dedup["method"] != "none":
        dedup_info = {"method": s.dedup["method"], "removed": 0}
    kept = [i for i in order if i not in dropped]
    kept_ids = [records[i]["id"] for i in kept]
    train_ids, val_ids = split_train_val(kept_ids, float(s.cfg["train_val_split"]), int(s.cfg["seed"]))
    train_rows, val_rows = [], []
    for i in kept:  # kept is in score order; the split is by the seeded shuffle
        rid = records[i]["id"]
        target = train_rows if rid in train_ids else val_rows
        dim_scores = {j: v for j, v in judged.votes[i].items()}
        target.append((i, dim_scores))
    fmt = s.args.format

    def rows(items: list[tuple[int, dict[str, dict[str, float]]]]) -> list[dict[str, Any]]:
        return [jg.export_row(records[i], fmt, n + 1, decisions[i].score, ds) for n, (i, ds) in enumerate(items)]

    out = s.out_dir
    with writing(s):
        write_jsonl(out / "generated_raw.jsonl", records)
    scored = []
    for i, rec in enumerate(records):
        d = decisions[i]
        dup = dropped.get(i)
        scored.append({
            "id": rec["id"], "source": rec["source"], "messages": rec["messages"], "meta": rec["meta"],
            "judges": judged.detail[i], "votes": d.votes,
            "avg_score": None if d.score is None else round(d.score, 4),
            "dimension_means": {k: round(v, 4) for k, v in d.dimension_means.items()},
            "passed_filter": d.passed, "fail_reasons": d.fail_reasons,
            "duplicate_of": records[dup[0]]["id"] if dup else None,
            "similarity": round(dup[1], 4) if dup else None,
            "split": "train" if rec["id"] in train_ids else "val" if rec["id"] in val_ids else None,
        })
    with writing(s):
        write_jsonl(out / "scored.jsonl", scored)
        write_jsonl(out / "train.jsonl", rows(train_rows))
        write_jsonl(out / "val.jsonl", rows(val_rows))

    statuses = Counter(v["status"] for det in judged.detail for v in det.values())
    per_judge_status = {j.name: Counter(det[j.name]["status"] for det in judged.detail) for j in s.judges}
    failures = {j.name: Counter(det[j.name].get("error") for det in judged.detail
                                if det[j.name]["status"] == "failed") for j in s.judges}
    for c in costs:
        c.update(votes=per_judge_status[c["name"]]["vote"], failed=per_judge_status[c["name"]]["failed"],
                 missing=per_judge_status[c["name"]]["missing"],
                 endpoint_down=per_judge_status[c["name"]]["endpoint_down"],
                 down=score_run.down.get(c["name"]) if score_run else None,
                 failures_by_reason=dict(failures[c["name"]]),
                 mean_score=_mean([jg.weighted_score(v[c["name"]], dims) for v in judged.votes if c["name"] in v]))
    meta = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(time.time() - t0, 2),
        "stage": s.args.stage,
        "input": str(s.args.input),
        "slices": s.args.slices,
        "format": fmt,
        "counts": {
            "input_records": len(records),
            "bad_lines": bad.count,
            "verdicts_expected": len(records) * len(s.judges),
            "votes": statuses["vote"], "failed_verdicts": statuses["failed"], "missing_verdicts": statuses["missing"],
            "endpoint_down_verdicts": statuses["endpoint_down"],
            "with_min_votes": sum(d.votes >= rules.min_votes for d in decisions),
            "passed_filter": len(passed),
            "after_dedup": len(kept),
            "train": len(train_rows), "val": len(val_rows),
        },
        "removed": {**dict(sorted(removed.items())), "duplicate": len(dropped)},
        "bad_lines_by_reason": bad.as_dict()["by_reason"],
        "scores": {"voted": score_block(decisions, dims), "kept": score_block([decisions[i] for i in kept], dims)},
        "judges": costs,
        "agreement": jg.agreement(judged.votes, [j.name for j in s.judges], dims, rules),
        "thresholds": {"min_score_threshold": rules.threshold, "min_votes": rules.min_votes, "floors": rules.floors,
                       "floor_rule": rules.floor_rule, "scale": list(rules.scale)},
        "dimensions": [{"name": d.name, "weight": d.weight} for d in dims],
        "dedup": dedup_info,
        "split": {"train_val_split": float(s.cfg["train_val_split"]), "seed": int(s.cfg["seed"])},
        "config_hash": jg.config_hash(s.cfg),
        "journal": str(s.journal_path),
        "cost_usd_this_run": _sum_costs(costs, "cost_usd_this_run"),
        "cost_usd_all_runs": _sum_costs(costs, "cost_usd_all_runs"),
    }
    with writing(s):
        write_json(out / "metadata.json", meta)
    print_summary(meta, out)
    return 0


def _sum_costs(costs: list[dict[str, Any]], key: str) -> float | None:
    vals = [c[key] for c in costs]
    return None if any(v is None for v in vals) else round(sum(vals), 6)


def _fmt_cost(x: float | None) -> str:
    return "price unknown" if x is None else f"${x:.4f}"


def print_summary(meta: dict[str, Any], out: Path) -> None:
    c = meta["counts"]
    lines = [
        f"judge.py — {meta['input']} -> {out}  ({meta['elapsed_s']}s)",
        f"records: {c['input_records']} read, {c['bad_lines']} bad lines skipped",
        f"verdicts: {c['votes']} votes, {c['failed_verdicts']} failed/invalid (no vote), {c['missing_verdicts']} "
        f"missing, {c['endpoint_down_verdicts']} not asked (endpoint down) of {c['verdicts_expected']}",
        f"steps: {c['input_records']} -> {c['with_min_votes']} with >= {meta['thresholds']['min_votes']} votes -> "
        f"{c['passed_filter']} passed filter -> {c['after_dedup']} after dedup -> train {c['train']} / val {c['val']}",
        "removed: " + (", ".join(f"{k} {v}" for k, v in meta["removed"].items()) or "nothing"),
    ]
    sc = meta["scores"]
    for label in ("voted", "kept"):
        b = sc[label]
        dims = ", ".join(f"{k} {v}" for k, v in b["dimension_means"].items())
        lines.append(f"mean score ({label}, n={b['n']}): {b['mean']}  [{dims}]")
    for j in meta["judges"]:
        t = j["tokens_this_run"]
        fails = f" {j['failures_by_reason']}" if j["failures_by_reason"] else ""
        lines.append(f"judge {j['name']} ({j['model']}): {j['votes']} votes, {j['failed']} failed{fails}, "
                     f"mean {j['mean_score']}; this run {j['verdicts_this_run']} "
                     f"verdicts, {t['prompt_tokens']}+{t['completion_tokens']} tokens, "
                     f"{_fmt_cost(j['cost_usd_this_run'])} (all runs {_fmt_cost(j['cost_usd_all_runs'])})")
    for a in meta["agreement"]:
        lines.append(f"agreement {a['judges'][0]} vs {a['judges'][1]} (n={a['n']}): spearman {a['spearman']}, "
                     f"kappa {a['cohen_kappa']}")
    d = meta["dedup"]
    lines.append(f"dedup: {d.get('encoder', d['method'])}, removed {d['removed']}")
    if c["missing_verdicts"] and meta["stage"] == "filter":
        lines.append("note: some verdicts are missing from the journal; run --stage all to ask for them")
    lines.append(f"wrote {out}/train.jsonl, val.jsonl, scored.jsonl, generated_raw.jsonl, metadata.json")
    print("\n".join(lines))


def print_score_summary(s: Setup, records: list[dict[str, Any]], pending: list[tuple[int, jg.JudgeSpec]],
                        run: ScoreRun | None, costs: list[dict[str, Any]], bad: BadLines, t0: float) -> None:
    stats = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "elapsed_s": round(time.time() - t0, 2), "stage": "score", "input": str(s.args.input),
             "input_records": len(records), "bad_lines": bad.count, "verdicts_asked": len(pending),
             "journal": str(s.journal_path), "config_hash": jg.config_hash(s.cfg), "judges": costs}
    for c in costs:
        c.update(votes_this_run=run.votes[c["name"]] if run else 0,
                 failures_this_run=dict(run.failures[c["name"]]) if run else {})
    with writing(s):
        write_json(s.out_dir / "score_run.json", stats)
    print(f"judge.py --stage score — {len(records)} records, {bad.count} bad lines, {len(pending)} verdicts asked "
          f"({stats['elapsed_s']}s); journal {s.journal_path}")
    for c in costs:
        t = c["tokens_this_run"]
        print(f"judge {c['name']} ({c['model']}): {c['votes_this_run']} votes, failures "
              f"{c['failures_this_run'] or 'none'}, {t['prompt_tokens']}+{t['completion_tokens']} tokens, "
              f"{_fmt_cost(c['cost_usd_this_run'])}")
    print(f"wrote {s.out_dir / 'score_run.json'}; run --stage filter to filter, dedup and split")


if __name__ == "__main__":
    sys.exit(main())
