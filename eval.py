#!/usr/bin/env python
"""Does the tuned model beat the base? Answers from both, pairwise LLM judging in both orders, one report.

    python eval.py --base MODEL | --base-answers FILE   --tuned MODEL [--adapter DIR] | --tuned-answers FILE
        --input val.jsonl [--judges CONFIG.json] [--train-file TRAIN.jsonl] [--human-labels LABELS.jsonl]
        [--output-dir DIR] [--backend hf|vllm|sglang] [--max-new-tokens N] [--dry-run]

Writes answers.jsonl (the answer journal), judgements.jsonl (the verdict journal), eval_report.json and
eval_report.md into --output-dir; a rerun of the same command generates and sends only what is missing.
Figures: the win rate (wins + ties/2) / n with Wilson-cc 95% intervals, overall, per judge, category and source;
the length-controlled win rate; position bias per judge; agreement with --human-labels; contamination against
--train-file. The judges config has judge.py's form (`judges`, `judge_defaults`); without one, the default judges,
or the gen endpoint when only OPENAI_API_KEY is set. Exit 1 when any verdict is missing or unusable (the report
says "complete": false and lists them; a rerun asks again). See docs, "Evaluate".
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from sftkit.distill import judging as jg
from sftkit.evaluate import answers as ans
from sftkit.evaluate import contamination as contam
from sftkit.evaluate import human, stage
from sftkit.evaluate import pairwise as pw
from sftkit.evaluate import report as rp
from sftkit.io.cli import ScriptParser, UsageError, run_script
from sftkit.io.jsonl import BadLines, Journal, LockedError, write_json
from sftkit.llm.client import Usage
from sftkit.llm.config import RedactFilter, dotenv
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
    a("--base", default=None, help="base model folder (or hub id); or --base-answers")
    a("--tuned", default=None, help="tuned model folder; with --adapter, the model the adapter applies to; or "
      "--tuned-answers")
    a("--adapter", default=None, help="PEFT LoRA adapter folder applied to --tuned")
    a("--base-answers", default=None, metavar="FILE",
      help="the base side's answers instead of a model: JSONL with the input record's `id` and `response` "
      "(infer.py's --output qualifies); no model is loaded")
    a("--tuned-answers", default=None, metavar="FILE", help="the tuned side's answers instead of a model (as above)")
    a("--base-name", default=None, help="the base side's name in the report (default: the model or the file name)")
    a("--tuned-name", default=None, help="the tuned side's name in the report (default: the model or the file name)")
    a("--input", required=True, help="held-out JSONL records (any SPEC form); a final assistant turn is the reference")
    a("--judges", default=None, help="judges config JSON in judge.py's form (judges, judge_defaults); default: the "
      "default judges, or one judge on the gen endpoint (OPENAI_API_KEY, OPENAI_BASE_URL) when only its key is set")
    a("--train-file", action="append", default=[], metavar="FILE",
      help="training data (any record form; repeatable): eval prompts whose user turns are near-duplicates of a "
      "training record's (prep's MinHash rule, Jaccard >= 0.7) are listed and left out")
    a("--keep-contaminated", action="store_true", help="list contaminated prompts but keep them in the figures")
    a("--human-labels", default=None, metavar="FILE",
      help="JSONL of {id, winner: tuned|base|tie}: the judges' agreement with people (with / without ties, kappa)")
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
    a("--retry-failed", action="store_true",
      help="also ask unusable verdicts and rejected requests again (a plain rerun asks transient failures again)")
    return p


def side_from_flags(side: str, model: str | None, adapter: str | None, answers: str | None,
                    name: str | None) -> ans.ModelSide:
    if bool(model) == bool(answers):
        raise UsageError(f"give --{side} MODEL or --{side}-answers FILE (one of them)")
    if answers and adapter:
        raise UsageError("--adapter applies to --tuned MODEL, not to --tuned-answers")
    if answers and not Path(answers).is_file():
        raise UsageError(f"--{side}-answers {answers}: no such file")
    return ans.ModelSide(side, model or "", adapter, answers, name or "")


def resolve(ns: argparse.Namespace) -> stage.Setup:
    """Flags -> the judges, the records' bad lines, the answer plan, labels (every check before anything loads)."""
    if ns.max_new_tokens < 1 or ns.limit < 0:
        raise UsageError("--max-new-tokens must be >= 1 and --limit >= 0")
    for flag, path in (("--input", ns.input), ("--judges", ns.judges), ("--adapter", ns.adapter),
                       *(("--train-file", f) for f in ns.train_file)):
        if path and not Path(path).exists():
            raise UsageError(f"{flag} {path}: no such file or folder")
    sides = [side_from_flags("base", ns.base, None, ns.base_answers, ns.base_name),
             side_from_flags("tuned", ns.tuned, ns.adapter, ns.tuned_answers, ns.tuned_name)]
    cfg = jg.load_config(ns.judges)
    env = dotenv(".env") if Path(".env").is_file() else {}
    judge_keys = {}
    for spec in ns.judge_key:
        name, sep, key = spec.partition("=")
        if not sep or not name or not key:
            raise UsageError("--judge-key expects NAME=KEY")
        judge_keys[name] = key
    cfg, note = jg.fallback_to_gen_endpoint(cfg, configured=jg.sets_judges(ns.judges), flag_key=ns.api_key,
                                            judge_keys=judge_keys, env_file=env, need_keys=not ns.dry_run)
    judges = jg.judges_from_config(cfg, flag_key=ns.api_key, judge_keys=judge_keys, env_file=env,
                                   need_keys=not ns.dry_run)
    labels = None
    if ns.human_labels:
        try:
            labels = human.read_labels(ns.human_labels, BadLines(log))
        except human.LabelsError as e:
            raise UsageError(str(e)) from None
    requests, bad = ans.read_prompts(ns.input, ns.system, ns.limit)
    template = ns.template or ans.recorded_template(ns.adapter, ns.tuned, ns.base) or ans.DEFAULT_TEMPLATE
    sampling = Sampling(temperature=ns.temperature, top_p=ns.top_p, max_new_tokens=ns.max_new_tokens, seed=ns.seed)
    secrets = [j.api_key for j in judges] + list(judge_keys.values()) + [ns.api_key]
    return stage.Setup(judges, bad, ans.AnswerPlan(requests, sides, template, sampling, ns.backend, ns.dtype),
                 [x for x in secrets if x], labels, note)


def dry_run(ns: argparse.Namespace, su: stage.Setup, out: Path) -> int:
    """Requests still to make and an upper-bound cost: judge prompt at one token per character with both answers
    at max_new_tokens, the reply at the judge's max_tokens."""
    judges, plan = su.judges, su.plan
    pending = plan.pending(ans.journal_index(Journal.read(out / ANSWERS)))
    n_answers = sum(len(v) for v in pending.values())
    n = len(plan.requests)
    per_judge = n * len(pw.ORDERS)
    print(f"eval.py --dry-run: {n} prompts, {len(judges)} judge(s), nothing sent")
    print(f"answers to generate: {n_answers} (base {len(pending.get('base', []))}, tuned "
          f"{len(pending.get('tuned', []))}) of {n * len(plan.model_sides())}"
          + "".join(f"; {s.side} from {s.answers}" for s in plan.sides if s.answers))
    print(f"judge requests: {per_judge * len(judges)} = {n} prompts x {len(judges)} judges x {len(pw.ORDERS)} orders")
    print(f"total requests: {n_answers + per_judge * len(judges)}")
    if not n_answers:  # every answer is at hand: the verdict journal says which judge requests are left
        files, _ = stage.read_answer_files(plan, BadLines(log))
        rows = ans.answer_rows(plan, ans.journal_index(Journal.read(out / ANSWERS)), files)
        items, _, _ = stage.pair_items(plan, rows)
        left = JournaledRun(out / JUDGEMENTS, pw.KEY_FIELDS, read_only=True).pending(
            pw.jobs_for(items, judges), pw.redo(ns.retry_failed))
        print(f"judge requests not yet journaled (or to ask again): {len(left)}")
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
    su = resolve(ns)
    redact = RedactFilter(su.secrets)  # no key in any log line (judge.py does the same)
    for h in logging.getLogger().handlers:
        h.addFilter(redact)
    if su.judge_note:
        log.warning("%s", su.judge_note)
    judges, bad, plan = su.judges, su.bad, su.plan
    prompts_read = len(plan.requests)
    try:
        contamination = stage.contamination(plan, ns.train_file, ns.keep_contaminated)
    except contam.TrainFileError as e:
        raise UsageError(str(e)) from None
    out = Path(ns.output_dir)
    if ns.dry_run:
        return dry_run(ns, su, out)
    if plan.model_sides():
        check_backend_installed(ns.backend)
    if importlib.util.find_spec("sacrebleu") is None:  # before any answer is generated or verdict bought
        raise UsageError("eval.py needs sacrebleu for chrF (pip install sacrebleu==2.6.0, see requirements.txt)")
    files, unknown = stage.read_answer_files(plan, bad)
    out.mkdir(parents=True, exist_ok=True)
    with Journal(out / ANSWERS) as journal:
        generated = ans.generate_missing(plan, journal, trust_remote_code=ns.trust_remote_code,
                                         batch_size=ns.batch_size,
                                         progress=lambda m: log.info("answers %s", m))
        index = ans.journal_index(journal.entries)
    rows = ans.answer_rows(plan, index, files)
    items, kept, missing = stage.pair_items(plan, rows)
    stage.warn_missing_answers(plan, missing)
    if not items:
        raise ans.EvalInputError(f"no prompt has an answer from both sides (base misses {len(missing['base'])}, "
                                 f"tuned {len(missing['tuned'])} of {len(plan.requests)})")
    with JournaledRun(out / JUDGEMENTS, pw.KEY_FIELDS) as jrun:
        jobs = pw.jobs_for(items, judges)
        pending = jrun.pending(jobs, pw.redo(ns.retry_failed))
        result = pw.send(jrun, pending, judges, ns.seed) if pending else None
        vindex = jrun.index()
        usage_all = jrun.usage_by(lambda e: e.get("judge"))
    votes = pw.collect(items, judges, vindex)
    answered = {s: [v[i] for i in kept] for s, v in rows.items()}  # judge-free figures: the compared prompts
    costs = stage.judge_costs(judges, result, usage_all)
    why_incomplete = stage.incomplete_line(votes, result)
    base, tuned = plan.sides
    meta = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "base": base.label,
            "tuned": tuned.label, "input": ns.input,
            "sides": {s.side: stage.side_info(s, plan, unknown) for s in plan.sides},
            "judges": [j.name for j in judges], "judge_costs": costs, "backend": ns.backend,
            "template": plan.template, "sampling": plan.sampling.__dict__, "max_new_tokens": ns.max_new_tokens,
            "bad_lines": bad.count, "prompts_read": prompts_read, "contamination": contamination,
            "missing_answers": {s: len(v) for s, v in missing.items()},
            "missing_answer_ids": {s: v[:100] for s, v in missing.items()},
            "answers_generated_this_run": generated, "judge_requests_this_run": len(pending),
            "incomplete": why_incomplete, "elapsed_s": round(time.time() - t0, 2)}
    report = rp.build(items, [plan.requests[i].record for i in kept], votes, [j.name for j in judges], answered,
                      ns.max_new_tokens if plan.model_sides() else None, meta, su.labels)
    write_json(out / "eval_report.json", report)
    (out / "eval_report.md").write_text(rp.markdown(report), encoding="utf-8")
    for line in stage.summary_lines(report, generated, len(pending), time.time() - t0, costs):
        print(line)
    print(f"wrote {out / 'eval_report.json'}, {out / 'eval_report.md'}")
    if why_incomplete:
        print(f"eval: {why_incomplete}", file=sys.stderr)
        return 1
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
