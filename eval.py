#!/usr/bin/env python
"""Does the tuned model beat the base? Answers from both, pairwise LLM judging in both orders, one report.

    python eval.py --base MODEL --tuned MODEL [--adapter DIR] --input val.jsonl --judges CONFIG.json
        [--output-dir DIR] [--backend hf|vllm|sglang] [--max-new-tokens N] [--dry-run]

Writes answers.jsonl (the answer journal), judgements.jsonl (the verdict journal), eval_report.json and
eval_report.md into --output-dir; a rerun of the same command generates and sends only what is missing.
The judges config has judge.py's form (`judges`, `judge_defaults`); see README "8. Evaluate".
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sftkit.distill import judging as jg
from sftkit.evaluate import answers as ans
from sftkit.evaluate import pairwise as pw
from sftkit.evaluate import report as rp
from sftkit.io.cli import ScriptParser, UsageError, run_script
from sftkit.io.jsonl import BadLines, Journal, LockedError, write_json
from sftkit.llm.client import Usage
from sftkit.llm.config import dotenv
from sftkit.llm.runner import JournaledRun, cost
from sftkit.model.inference import (
    BACKENDS,
    DTYPES,
    BackendMissing,
    EngineStartError,
    InferenceError,
    Sampling,
    check_backend_installed,
)
from sftkit.model.templates import TEMPLATE_NAMES, TemplateError

log = logging.getLogger("eval")
ANSWERS, JUDGEMENTS = "answers.jsonl", "judgements.jsonl"


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(prog="eval.py", description="Tuned vs base: answers, pairwise judging, report.",
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--base", required=True, help="base model folder (or hub id)")
    a("--tuned", required=True, help="tuned model folder; with --adapter, the model the adapter applies to")
    a("--adapter", default=None, help="PEFT LoRA adapter folder applied to --tuned")
    a("--input", required=True, help="held-out JSONL records (any SPEC form); a final assistant turn is the reference")
    a("--judges", required=True, help="judges config JSON in judge.py's form (judges, judge_defaults)")
    a("--output-dir", default="outputs/eval", help="answers, verdict journal and eval_report.{json,md} go here")
    a("--dry-run", action="store_true", help="print the number of requests and a cost estimate; send nothing")
    a("--backend", choices=BACKENDS, default="hf", help="inference engine (see infer/infer.py)")
    a("--template", choices=TEMPLATE_NAMES, default=None,
      help=f"chat template for both models (default: recorded by train/ beside the adapter / tuned / base model, "
      f"else {ans.DEFAULT_TEMPLATE})")
    a("--max-new-tokens", type=int, default=512, help="most tokens per answer")
    a("--temperature", type=float, default=0.0, help="0 = greedy; above 0 samples with --seed")
    a("--top-p", type=float, default=0.8, help="nucleus mass when sampling")
    a("--seed", type=int, default=42, help="sampling seed, judge request seed and bootstrap seed")
    a("--system", default=None, help="system prompt for records that have none")
    a("--limit", type=int, default=0, help="evaluate only the first N records (0: all)")
    a("--dtype", choices=DTYPES, default="auto", help="weights dtype (infer/infer.py's rule)")
    a("--batch-size", type=int, default=8, help="prompts per hf generate call")
    a("--trust-remote-code", action="store_true", help="allow the model folders' own code")
    a("--api-key", default="", help="API key for every judge (else each judge's api_key_env or .env)")
    a("--judge-key", action="append", default=[], metavar="NAME=KEY", help="API key for one judge (repeatable)")
    a("--retry-failed", action="store_true", help="ask failed / invalid verdicts again")
    return p


def resolve(ns: argparse.Namespace) -> tuple[list[jg.JudgeSpec], BadLines, ans.AnswerPlan]:
    """Flags -> the judges, the records' bad lines and the answer plan (every check before anything loads)."""
    if ns.max_new_tokens < 1 or ns.limit < 0:
        raise UsageError("--max-new-tokens must be >= 1 and --limit >= 0")
    for flag, path in (("--input", ns.input), ("--judges", ns.judges), ("--adapter", ns.adapter)):
        if path and not Path(path).exists():
            raise UsageError(f"{flag} {path}: no such file or folder")
    cfg = jg.load_config(ns.judges)
    env = dotenv(".env") if Path(".env").is_file() else {}
    judge_keys = {}
    for spec in ns.judge_key:
        name, sep, key = spec.partition("=")
        if not sep or not name or not key:
            raise UsageError("--judge-key expects NAME=KEY")
        judge_keys[name] = key
    judges = jg.judges_from_config(cfg, flag_key=ns.api_key, judge_keys=judge_keys, env_file=env,
                                   need_keys=not ns.dry_run)
    requests, bad = ans.read_prompts(ns.input, ns.system, ns.limit)
    template = ns.template or ans.recorded_template(ns.adapter, ns.tuned, ns.base) or ans.DEFAULT_TEMPLATE
    sampling = Sampling(temperature=ns.temperature, top_p=ns.top_p, max_new_tokens=ns.max_new_tokens, seed=ns.seed)
    sides = [ans.ModelSide("base", ns.base), ans.ModelSide("tuned", ns.tuned, ns.adapter)]
    return judges, bad, ans.AnswerPlan(requests, sides, template, sampling, ns.backend, ns.dtype)


def pair_items(plan: ans.AnswerPlan, rows: dict[str, list[Any]]) -> tuple[list[pw.PairItem], list[int]]:
    """The prompts both models answered, as judging items, and their request indices."""
    items, kept = [], []
    for i, req in enumerate(plan.requests):
        t, b = rows["tuned"][i], rows["base"][i]
        if t is not None and b is not None:
            items.append(pw.PairItem(req.record["id"], req.messages, req.reference, t["response"], b["response"]))
            kept.append(i)
    return items, kept


def dry_run(ns: argparse.Namespace, judges: list[jg.JudgeSpec], plan: ans.AnswerPlan, out: Path) -> int:
    """Requests still to make and an upper-bound cost: judge prompt at one token per character with both answers
    at max_new_tokens, the reply at the judge's max_tokens."""
    pending = plan.pending(ans.journal_index(Journal.read(out / ANSWERS)))
    n_answers = sum(len(v) for v in pending.values())
    n = len(plan.requests)
    per_judge = n * len(pw.ORDERS)
    print(f"eval.py --dry-run: {n} prompts, {len(judges)} judge(s), nothing sent")
    print(f"answers to generate: {n_answers} (base {len(pending['base'])}, tuned {len(pending['tuned'])}) "
          f"of {2 * n}")
    print(f"judge requests: {per_judge * len(judges)} = {n} prompts x {len(judges)} judges x {len(pw.ORDERS)} orders")
    print(f"total requests: {n_answers + per_judge * len(judges)}")
    if not n_answers:  # every answer is journaled: the verdict journal says which judge requests are left
        items, _ = pair_items(plan, ans.answer_rows(plan, ans.journal_index(Journal.read(out / ANSWERS))))
        left = JournaledRun(out / JUDGEMENTS, pw.KEY_FIELDS, read_only=True).pending(pw.jobs_for(items, judges))
        print(f"judge requests not yet journaled: {len(left)}")
    total: float | None = 0.0
    for j in judges:
        prompt_tokens = sum(len(m["content"]) for r in plan.requests
                            for m in pw.build_pair_messages(r.messages, r.reference, "", ""))
        prompt_tokens = len(pw.ORDERS) * (prompt_tokens + n * 2 * ns.max_new_tokens)
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=per_judge * (j.max_tokens or 1024))
        c = cost(j.model, usage, j.price)
        total = None if c is None or total is None else total + c
        print(f"judge {j.name} ({j.model}): {per_judge} requests, <= {usage.prompt_tokens:,} prompt + "
              f"{usage.completion_tokens:,} completion tokens, " + ("price unknown" if c is None else f"<= ${c:.4f}"))
    print("estimated cost: " + ("unknown (a judge has no price)" if total is None else f"<= ${total:.4f}"))
    return 0


def run(ns: argparse.Namespace) -> int:
    t0 = time.time()
    judges, bad, plan = resolve(ns)
    out = Path(ns.output_dir)
    if ns.dry_run:
        return dry_run(ns, judges, plan, out)
    check_backend_installed(ns.backend)
    if importlib.util.find_spec("sacrebleu") is None:  # before any answer is generated or verdict bought
        raise UsageError("eval.py needs sacrebleu for chrF (pip install sacrebleu==2.6.0, see requirements.txt)")
    out.mkdir(parents=True, exist_ok=True)
    with Journal(out / ANSWERS) as journal:
        generated = ans.generate_missing(plan, journal, trust_remote_code=ns.trust_remote_code,
                                         batch_size=ns.batch_size,
                                         progress=lambda m: log.info("answers %s", m))
        index = ans.journal_index(journal.entries)
    rows = ans.answer_rows(plan, index)
    items, kept = pair_items(plan, rows)
    with JournaledRun(out / JUDGEMENTS, pw.KEY_FIELDS) as jrun:
        jobs = pw.jobs_for(items, judges)
        pending = jrun.pending(jobs, (lambda e: not e.get("ok")) if ns.retry_failed else None)
        result = pw.send(jrun, pending, judges, ns.seed) if pending else None
        vindex = jrun.index()
        usage_all = jrun.usage_by(lambda e: e.get("judge"))
    votes = pw.collect(items, judges, vindex)
    answered = {s: [r for r in v if r is not None] for s, v in rows.items()}
    tallies = dict(result.targets) if result else {}
    costs = {j.name: {"model": j.model, "requests_this_run": tallies[j.name].jobs if j.name in tallies else 0,
                      "tokens_this_run": (tallies[j.name].usage if j.name in tallies else Usage()).as_dict(),
                      "cost_usd_this_run": cost(j.model, tallies[j.name].usage if j.name in tallies else Usage(),
                                                j.price),
                      "cost_usd_all_runs": cost(j.model, usage_all.get(j.name, Usage()), j.price),
                      "down": (result.down() if result else {}).get(j.name)} for j in judges}
    meta = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "base": ns.base,
            "tuned": ns.tuned + (f" + {ns.adapter}" if ns.adapter else ""), "input": ns.input,
            "judges": [j.name for j in judges], "judge_costs": costs, "backend": ns.backend,
            "template": plan.template, "sampling": plan.sampling.__dict__, "max_new_tokens": ns.max_new_tokens,
            "bad_lines": bad.count, "answers_generated_this_run": generated, "judge_requests_this_run": len(pending),
            "fatal": result.fatal if result else "", "elapsed_s": round(time.time() - t0, 2)}
    report = rp.build(items, [plan.requests[i].record for i in kept], votes, [j.name for j in judges], answered,
                      ns.max_new_tokens, ns.seed, meta)
    write_json(out / "eval_report.json", report)
    (out / "eval_report.md").write_text(rp.markdown(report), encoding="utf-8")
    o = report["overall"]
    print(f"eval.py — {len(plan.requests)} prompts, {len(items)} answered by both, {report['judged']} judged "
          f"({time.time() - t0:.1f}s)")
    print(f"answers generated this run: base {generated['base']}, tuned {generated['tuned']}; judge requests this "
          f"run: {len(pending)}")
    print(f"tuned vs base: win {o['win']}, tie {o['tie']}, loss {o['loss']}; win rate {o['win_rate']} "
          f"{rp.ci_text(o['win_rate_ci95'])}, win-loss {o['net']} {rp.ci_text(o['net_ci95'])} (95% bootstrap)")
    for j in judges:
        s = report["per_judge"][j.name]
        c = costs[j.name]
        spent = "price unknown" if c["cost_usd_this_run"] is None else f"${c['cost_usd_this_run']:.4f}"
        down = f"; endpoint down: {c['down']}" if c["down"] else ""
        print(f"judge {j.name}: {s['vote']} votes, {s['failed']} failed, {s['missing']} missing; this run "
              f"{c['requests_this_run']} requests, {spent}{down}")
    if result and result.fatal:
        print(f"stopped: {result.fatal}")
    print(f"wrote {out / 'eval_report.json'}, {out / 'eval_report.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        ns = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse already printed its one-line reason
        return int(e.code or 0)
    try:
        return run(ns)
    except (UsageError, LockedError, ans.EvalInputError, jg.ConfigError, BackendMissing, InferenceError,
            TemplateError) as e:
        print(f"eval: {e}", file=sys.stderr)
        return 2
    except (EngineStartError, OSError) as e:
        print(f"eval: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # vLLM and SGLang spawn workers that re-import this file: engines start only from here.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    sys.exit(run_script(main))
