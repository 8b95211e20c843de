"""The judging stage of judge.py on the shared runner (sftkit/llm/runner.py): the plan (one judge prompt per
record, a verdict key per judge), the verdict reader (an invalid verdict is asked again, showing the judge what
was wrong), vote collection from the journal, dedup, the seeded train/val split, cost accounting, and the
outputs (scored.jsonl, train/val, generated_raw.jsonl, metadata.json or score_run.json) with their summaries.

judging.py holds the pure parts (config, prompts, verdict parsing, decisions, agreement); this module runs them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sftkit.distill import judging as jg
from sftkit.io.jsonl import BadLines, iter_jsonl, write_json, write_jsonl
from sftkit.io.records import RecordError, to_record
from sftkit.io.trainval import split_train_val
from sftkit.llm.client import ChatError, ChatResult, Usage, policy_kwargs
from sftkit.llm.config import is_local_url, resolve
from sftkit.llm.local_teacher import TeacherPool, json_schema_format, verdict_schema
from sftkit.llm.runner import Answer, Job, JournaledRun, RunResult, Stage, Tally, Target, cost

KEY_FIELDS = ("rid", "judge", "ph")  # a verdict is keyed by record id, judge name and prompt hash
Index = dict[Any, dict[str, Any]]  # (rid, judge, ph) -> the latest journal entry


class OutputError(Exception):
    """The journal or an output cannot be written (full disk, unwritable directory): exit 1."""


@dataclass
class Setup:
    """Everything judge.py resolved from its flags and config before anything is read or sent."""

    args: argparse.Namespace
    cfg: dict[str, Any]
    dims: list[jg.Dimension]
    rules: jg.Rules
    judges: list[jg.JudgeSpec]
    out_dir: Path
    journal_path: Path
    dedup: dict[str, Any]
    secrets: list[str] = field(default_factory=list)


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
        raise jg.ConfigError(f"dedup.method {method!r}: expected auto, hf, api, ngram, jieba or none")
    plan: dict[str, Any] = {"method": method, "block_size": int(d.get("block_size", 1024))}
    if method in ("hf", "api"):
        plan["threshold"] = float(d.get("threshold", 0.92))
        if not -1.0 <= plan["threshold"] <= 1.0:
            raise jg.ConfigError("dedup threshold (cosine) must be within [-1, 1]")
    if method == "hf":
        path = d.get("encoder_path") or ""
        if not path or not Path(path, "config.json").is_file():
            raise jg.ConfigError(f"dedup encoder {path!r} is not a model directory (no config.json); "
                                 "set dedup.encoder_path / --encoder, or use --dedup-method ngram")
        plan.update(path=path, max_length=int(d.get("max_length", 256)), batch_size=int(d.get("batch_size", 32)),
                    device=str(d.get("device", "cpu")))
    elif method == "api":
        if not api.get("base_url") or not api.get("model"):
            raise jg.ConfigError("dedup method api needs dedup.api.base_url and dedup.api.model "
                                 "(--embed-base-url, --embed-model)")
        key = resolve(None, env_file, str(api.get("api_key_env") or "OPENAI_API_KEY"), api.get("api_key") or None)
        if need_keys and not key and not is_local_url(api["base_url"]):
            raise jg.ConfigError(f"embeddings endpoint {api['base_url']} has no API key: set "
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
            raise jg.ConfigError("dedup.ngram.num_perm must be a multiple of dedup.ngram.bands")
    plan["text"] = str(d.get("text", "all"))
    if plan["text"] not in ("all", "prompt"):
        raise jg.ConfigError("dedup.text must be 'all' (user and assistant turns) or 'prompt' (user turns)")
    return plan


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


def jobs_for(plan: Plan, judges: list[jg.JudgeSpec]) -> list[Job]:
    """One job per (record, judge), record by record; `data` is (record index, judge)."""
    jobs = []
    schema = json_schema_format(verdict_schema([d.name for d in plan.dims], plan.rules.scale), "verdict")
    for i, rec in enumerate(plan.records):
        msgs = plan.messages(i)
        for j in judges:
            # the schema is a request option, not part of the verdict key: old journals still resume
            extra = {**(j.extra or {}), "response_format": schema} if j.json_schema else j.extra
            jobs.append(Job((rec["id"], j.name, plan.hashes[i][j.name]), msgs,
                            {"temperature": j.temperature, "max_tokens": j.max_tokens, "json_mode": j.json_mode,
                             "extra": extra}, target=j.name, tries=j.verdict_retries + 1, data=(i, j)))
    return jobs


@contextlib.contextmanager
def local_judges(judges: list[jg.JudgeSpec], pool: TeacherPool | None = None) -> Iterator[list[jg.JudgeSpec]]:
    """The judges with every `local_model` served (one server per distinct model, from `pool` when given, e.g.
    the one run_pipeline.py shares with generation) and its base_url pointed at it. Servers this block started
    stop when it exits by any path; a start-up failure raises TeacherError (one line, exit code 2 or 1)."""
    if not any(j.local_model for j in judges):
        yield judges
        return
    own = pool is None
    pool = pool or TeacherPool()
    try:
        served = []
        for j in judges:
            if j.local_model:
                teacher = pool.get(j.local_model, settings=j.local_teacher)
                j = dataclasses.replace(j, base_url=teacher.base_url, model=teacher.model_name)
            served.append(j)
        yield served
    finally:
        if own:
            pool.close()


def pending_verdicts(run: JournaledRun, plan: Plan, judges: list[jg.JudgeSpec], retry_failed: bool) -> list[Job]:
    """A job for every verdict not in the journal (and for failed or invalid ones with --retry-failed)."""
    return run.pending(jobs_for(plan, judges), (lambda e: not e.get("ok")) if retry_failed else None)


def targets_for(judges: list[jg.JudgeSpec]) -> dict[str, Target]:
    """Each judge is its own endpoint (its own policy, breaker and backoff)."""
    return {j.name: Target(j.base_url, j.api_key, j.model, max_concurrency=j.max_concurrency, timeout=j.timeout,
                           retries=j.retries, policy=policy_kwargs(j.policy),
                           label=f"judge {j.name!r} ({j.model} at {j.base_url})",
                           refused_note=f"judge {j.name!r} refused the request") for j in judges}


class VerdictStage(Stage):
    """Reads a verdict: valid scores are a vote; an invalid one is asked again (the judge sees its reply and what
    was wrong) until its verdict_retries are spent, then journaled as `invalid:REASON`; a request that failed for
    good is journaled as `request:REASON`. Either failure is no vote, never a 0."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def _entry(self, job: Job) -> dict[str, Any]:
        _i, judge = job.data
        rid, name, ph = job.key  # type: ignore[misc]
        return {"rid": rid, "judge": name, "ph": ph, "model": judge.model}

    def read(self, job: Job, result: ChatResult, tally: Tally) -> Answer:
        dims, scale = self.plan.dims, self.plan.rules.scale
        entry = self._entry(job)
        try:
            verdict = jg.parse_verdict(result.content, dims, scale)
        except jg.VerdictError as e:
            entry.update(ok=False, error=f"invalid:{e.reason}", detail=str(e)[:300], raw=result.content[:500],
                         attempts=tally.attempts, usage=tally.usage.as_dict(), ts=time.time())
            return Answer(entry, outcome=entry["error"], ok=False,
                          retry=jg.retry_messages(job.messages, result.content, str(e), dims, scale))
        entry.update(ok=True, scores=verdict.scores, reasons=verdict.reasons, attempts=tally.attempts,
                     usage=tally.usage.as_dict(), ts=time.time())
        return Answer(entry, outcome="vote")

    def failed(self, job: Job, err: ChatError, tally: Tally) -> Answer:
        entry = self._entry(job)
        entry.update(ok=False, error=f"request:{err.reason}", detail=err.detail[:300], attempts=tally.attempts,
                     usage=tally.usage.as_dict(), ts=time.time())
        return Answer(entry, outcome=entry["error"], ok=False)


def score(run: JournaledRun, pending: list[Job], plan: Plan, judges: list[jg.JudgeSpec], seed: int) -> RunResult:
    """Ask every pending verdict, each judge under its own endpoint policy, journaling each as it comes. A judge
    whose endpoint goes down gets nothing more sent; the others go on. A refused key or a journal that cannot be
    written stops every judge: requests in flight finish, nothing new is sent."""
    return run.send(pending, targets_for(judges), VerdictStage(plan), seed=seed,
                    bar={"unit": "verdict", "desc": "judging", "disable": None})


# ---- filtering ------------------------------------------------------------------------------------------------


@dataclass
class Judged:
    votes: list[dict[str, dict[str, float]]]  # per record: judge -> scores (valid verdicts only)
    detail: list[dict[str, dict[str, Any]]]  # per record: judge -> what scored.jsonl shows
    decisions: list[jg.Decision]


def collect(plan: Plan, judges: list[jg.JudgeSpec], index: Index,
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


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def score_block(decisions: list[jg.Decision], dims: list[jg.Dimension]) -> dict[str, Any]:
    ds = [d for d in decisions if d.score is not None]
    return {"n": len(ds), "mean": _mean([d.score for d in ds]),  # type: ignore[misc]
            "dimension_means": {dim.name: _mean([d.dimension_means[dim.name] for d in ds]) for dim in dims}}


def judge_costs(judges: list[jg.JudgeSpec], result: RunResult | None, run: JournaledRun) -> list[dict[str, Any]]:
    """Tokens and estimated USD per judge: this run, and all runs recorded in the journal."""
    names = {j.name for j in judges}
    total = run.usage_by(lambda e: e["judge"] if e.get("judge") in names and isinstance(e.get("usage"), dict)
                         else None)
    out = []
    for j in judges:
        tally = result.targets.get(j.name) if result else None
        client = tally.client.as_dict() if tally and tally.client else None
        this = tally.usage if tally else Usage()
        all_runs = total.get(j.name, Usage())
        out.append({**j.public(), "requests_this_run": client["requests"] if client else 0,
                    "verdicts_this_run": tally.journaled if tally else 0,
                    "tokens_this_run": this.as_dict(),
                    "cost_usd_this_run": cost(j.model, this, j.price),
                    "tokens_all_runs": all_runs.as_dict(),
                    "cost_usd_all_runs": cost(j.model, all_runs, j.price),
                    "client": client})
    return out


@contextlib.contextmanager
def writing(s: Setup) -> Iterator[None]:
    """An output that cannot be written (full disk, unwritable directory) is one line, exit 1."""
    try:
        yield
    except OSError as e:
        raise OutputError(f"cannot write the outputs in {s.out_dir}: {e}; the verdicts are journaled in "
                          f"{s.journal_path}: make room and rerun the same command") from None


def filter_and_write(s: Setup, plan: Plan, index: Index, costs: list[dict[str, Any]], bad: BadLines, t0: float,
                     result: RunResult | None) -> dict[str, Any]:
    """Every decision recomputed from the journal, then dedup, split and every output; returns metadata.json."""
    down = result.down() if result else {}
    records, dims, rules = plan.records, s.dims, s.rules
    judged = collect(plan, s.judges, index, rules, set(down))
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
    val_share = 1.0 - float(s.cfg["train_val_split"])  # the helper takes the validation part (below 1: a share)
    train_list, val_list, _ = split_train_val(kept_ids, val_share if val_share < 1 else float(len(kept_ids)),
                                              int(s.cfg["seed"]))  # (train_val_split 0: all but one to val)
    train_ids, val_ids = set(train_list), set(val_list)
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
                 down=down.get(c["name"]),
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
    return meta


def _sum_costs(costs: list[dict[str, Any]], key: str) -> float | None:
    vals = [c[key] for c in costs]
    return None if any(v is None for v in vals) else round(sum(vals), 6)


def _fmt_cost(x: float | None) -> str:
    return "price unknown" if x is None else f"${x:.4f}"


def summary(meta: dict[str, Any], out: Path) -> str:
    """The lines judge.py prints after filtering."""
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
    return "\n".join(lines)


def print_score_summary(s: Setup, records: list[dict[str, Any]], pending: list[Job], result: RunResult | None,
                        costs: list[dict[str, Any]], bad: BadLines, t0: float) -> None:
    """--stage score: score_run.json and its summary."""
    stats = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "elapsed_s": round(time.time() - t0, 2), "stage": "score", "input": str(s.args.input),
             "input_records": len(records), "bad_lines": bad.count, "verdicts_asked": len(pending),
             "journal": str(s.journal_path), "config_hash": jg.config_hash(s.cfg), "judges": costs}
    for c in costs:
        tally = result.targets.get(c["name"]) if result else None
        c.update(votes_this_run=tally.outcomes["vote"] if tally else 0,
                 failures_this_run={k: v for k, v in tally.outcomes.items() if k != "vote"} if tally else {})
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

