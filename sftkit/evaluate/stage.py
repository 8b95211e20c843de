"""The steps of eval.py between the flags and the report that are not model loading or sending: contamination
(which prompts are left out), answers from files (which prompts have no answer), the judging items, the judges'
costs, whether the run is complete (and the one line that says why not), and the one-screen summary.

Library functions over typed values; no argparse Namespace."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sftkit.distill import judging as jg
from sftkit.evaluate import answers as ans
from sftkit.evaluate import contamination as contam
from sftkit.evaluate import pairwise as pw
from sftkit.evaluate import report as rp
from sftkit.io.jsonl import BadLines
from sftkit.llm.client import Usage
from sftkit.llm.runner import RunResult, cost

log = logging.getLogger("eval")


@dataclass
class Setup:
    """What eval.py's flags resolve to, every check done before anything loads or is sent."""

    judges: list[jg.JudgeSpec]
    bad: BadLines
    plan: ans.AnswerPlan
    secrets: list[str]
    labels: dict[str, str] | None
    judge_note: str


def contamination(plan: ans.AnswerPlan, train_files: Sequence[str], keep: bool) -> dict[str, Any]:
    """Check the plan's prompts against the training files; unless `keep`, drop the contaminated ones from the plan
    (so nothing is generated or bought for them). The report's `contamination` block."""
    if not train_files:
        return {"checked": False, "na": "no --train-file given", "found": 0}
    texts = [contam.user_text(r.messages) for r in plan.requests]
    found, info = contam.check(texts, train_files)
    items = [{"id": plan.requests[f["index"]].record["id"], **{k: v for k, v in f.items() if k != "index"},
              "prompt": texts[f["index"]][:contam.QUOTE_CHARS]} for f in found]
    if found:
        log.warning("contamination: %d of %d eval prompts are near-duplicates of training records (first: %s, "
                    "Jaccard %.2f with %s); %s", len(found), len(texts), items[0]["id"], items[0]["jaccard"],
                    items[0]["train_id"], "kept (--keep-contaminated)" if keep else "left out")
    if found and not keep:
        bad = {f["index"] for f in found}
        plan.requests = [r for i, r in enumerate(plan.requests) if i not in bad]
        if not plan.requests:
            raise ans.EvalInputError(f"every one of the {len(texts)} eval prompts is a near-duplicate of a training "
                                     "record: nothing left to evaluate (--keep-contaminated judges them anyway)")
    return {"checked": True, **info, "kept": keep, "prompts_checked": len(texts), "items": items}


def read_answer_files(plan: ans.AnswerPlan, bad: BadLines) -> tuple[dict[str, list[dict[str, Any] | None]],
                                                                  dict[str, int]]:
    """Side -> per request its answer from the side's answers file; side -> rows naming no prompt of the input."""
    rows, unknown = {}, {}
    for side in plan.sides:
        if side.answers:
            rows[side.side], unknown[side.side] = ans.read_answers_file(side.answers, plan.requests, bad)
    return rows, unknown


def pair_items(plan: ans.AnswerPlan, rows: Mapping[str, Sequence[Any]]) -> tuple[list[pw.PairItem], list[int],
                                                                                 dict[str, list[str]]]:
    """The prompts both sides answered, as judging items, their request indices, and per side the ids of the
    prompts it has no answer for."""
    items, kept = [], []
    missing: dict[str, list[str]] = {s.side: [] for s in plan.sides}
    for i, req in enumerate(plan.requests):
        t, b = rows["tuned"][i], rows["base"][i]
        for side, row in (("base", b), ("tuned", t)):
            if row is None:
                missing[side].append(req.record["id"])
        if t is not None and b is not None:
            items.append(pw.PairItem(req.record["id"], req.messages, req.reference, t["response"], b["response"]))
            kept.append(i)
    return items, kept, missing


def warn_missing_answers(plan: ans.AnswerPlan, missing: Mapping[str, Sequence[str]]) -> None:
    """One warning for the prompts left out because a side has no answer for them."""
    parts = [f"{side} ({next(s.label for s in plan.sides if s.side == side)}) {len(ids)} (first: {ids[0]})"
             for side, ids in missing.items() if ids]
    if parts:
        left = len({i for ids in missing.values() for i in ids})
        log.warning("%d of %d prompts have no answer from one side and are left out: %s", left, len(plan.requests),
                    "; ".join(parts))


def side_info(side: ans.ModelSide, plan: ans.AnswerPlan, unknown: Mapping[str, int]) -> dict[str, Any]:
    """What the report says about where one side's answers came from."""
    if side.answers:
        return {"name": side.label, "answers_file": side.answers,
                "answers_file_rows_not_in_input": unknown.get(side.side, 0)}
    model_id, adapter_id = plan.identity(side)
    out: dict[str, Any] = {"name": side.label, "model": side.model, "weights_identity": model_id}
    if side.adapter:
        out.update(adapter=side.adapter, adapter_identity=adapter_id)
    return out


def judge_costs(judges: Sequence[jg.JudgeSpec], result: RunResult | None,
                usage_all: Mapping[str, Usage]) -> dict[str, dict[str, Any]]:
    """Per judge: requests, tokens and cost this run and over all runs (n/a with the reason where no price)."""
    tallies = dict(result.targets) if result else {}
    down = result.down() if result else {}
    out = {}
    for j in judges:
        t = tallies.get(j.name)
        usage = t.usage if t is not None else Usage()
        row: dict[str, Any] = {"model": j.model, "requests_this_run": t.jobs if t is not None else 0,
                               "tokens_this_run": usage.as_dict(),
                               "cost_usd_this_run": cost(j.model, usage, j.price),
                               "cost_usd_all_runs": cost(j.model, usage_all.get(j.name, Usage()), j.price)}
        if row["cost_usd_this_run"] is None:
            why = f"no price known for {j.model} (set judges[].price)"
            row["na"] = {"cost_usd_this_run": why, "cost_usd_all_runs": why}
        if j.name in down:
            row["down"] = down[j.name]
        out[j.name] = row
    return out


def incomplete_line(votes: pw.Votes, result: RunResult | None) -> str:
    """One line naming each judge whose verdicts are missing or unusable and why; "" when the run is complete."""
    parts = []
    if result is not None and result.write_error:
        parts.append(f"the verdict journal cannot be written ({result.write_error})")
    if result is not None and result.fatal:
        parts.append(f"stopped: {result.fatal}")
    by_judge: dict[str, list[dict[str, str]]] = {}
    for m in votes.missing:
        by_judge.setdefault(m["judge"], []).append(m)
    down = result.down() if result is not None else {}
    for judge, ms in by_judge.items():
        if judge in down:
            ms = [{**m, "reason": down[judge]} if m["reason"].startswith("not asked") else m for m in ms]
        reasons: dict[str, int] = {}
        for m in ms:
            key = m["reason"].split(": ", 1)[0] if m["reason"].startswith("unusable") else m["reason"][:160]
            reasons[key] = reasons.get(key, 0) + 1
        top = "; ".join(f"{n} {why}" for why, n in sorted(reasons.items(), key=lambda x: -x[1])[:2])
        parts.append(f"judge {judge!r}: {len(ms)} verdict(s) missing or unusable ({top}; first: {ms[0]['id']})")
    if not parts:
        return ""
    return ("incomplete: " + "; ".join(parts) + ". Rerun the same command: transient failures and unasked verdicts "
            "are asked again; --retry-failed also asks the unusable ones")


def summary_lines(rep: Mapping[str, Any], generated: Mapping[str, int], requests_sent: int, elapsed: float,
                  costs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The one-screen summary: the same figures as eval_report.json, n/a with the reason where undefined."""
    o = rep["overall"]
    c = rep["contamination"]
    lines = [f"eval.py — {rep['prompts_read']} prompts read, {rep['prompts']} compared, {rep['judged']} judged "
             f"({elapsed:.1f}s){'' if rep['complete'] else '  [INCOMPLETE]'}",
             f"answers generated this run: base {generated.get('base', 0)}, tuned {generated.get('tuned', 0)}; "
             f"judge requests this run: {requests_sent}",
             "contamination: " + (f"{c['found']} prompt(s) near-duplicate of training records, "
                                  f"{'kept' if c.get('kept') else 'left out'}" if c["checked"] else f"n/a ({c['na']})"),
             f"tuned ({rep['tuned']}) vs base ({rep['base']}): win {o['win']}, tie {o['tie']}, loss {o['loss']} "
             f"(n {o['n']}{', under 20' if o['small_n'] and o['n'] else ''}); "
             f"win rate {rp.with_ci(o, 'win_rate')} (ties count half, 95% Wilson-cc); "
             f"net {rp.fig(o, 'net')}",
             f"length-controlled win rate {rp.with_ci(o, 'lc_win_rate')}; length coef {rp.fig(o, 'length_coef')}"]
    for name, j in rep["per_judge"].items():
        cst = costs[name]
        spent = (f"${cst['cost_usd_this_run']:.4f}" if cst["cost_usd_this_run"] is not None
                 else f"n/a ({cst['na']['cost_usd_this_run']})")
        lines.append(f"judge {name}: {j['vote']} votes, {j['failed']} failed, {j['missing']} missing; win rate "
                     f"{rp.fig(j, 'win_rate')}, LC {rp.fig(j, 'lc_win_rate')}, flip rate "
                     f"{rp.fig(j, 'position_flip_rate')}, first-position rate {rp.fig(j, 'first_position_rate')}; "
                     f"this run {cst['requests_this_run']} requests, {spent}"
                     + (f"; endpoint down: {cst['down']}" if cst.get("down") else ""))
    h = rep["human_agreement"]
    if "combined" in h:
        a = h["combined"]
        lines.append(f"agreement with people (combined): {rp.fig(a, 'with_ties')} with ties (n {a['n_with_ties']}), "
                     f"{rp.fig(a, 'without_ties')} without (n {a['n_without_ties']}), kappa {rp.fig(a, 'kappa')}; "
                     "MT-Bench GPT-4 vs humans 0.66 / 0.85, human vs human 0.63 / 0.81")
    return lines
