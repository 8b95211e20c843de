#!/usr/bin/env python
"""Generate SFT records with an LLM over any OpenAI-compatible API.

Topics mode (seed 004): one request per topic asks for --n-per-topic {instruction, input, output} items,
written as system / user / assistant records. Slices mode (seed 000): --samples-per-slice requests per
knowledge slice, each for one pair grounded in the slice.

Every finished request is appended to a journal beside --out; a rerun with the same --out asks only for
what is missing, so a killed run (even SIGKILL) resumes without paying for a completed request twice.
The output, rejects and stats files are rebuilt from the journal at the end of every run. The journal is
locked while a run uses it: a second run on the same --out refuses at once (exit 2).

Endpoint policy (sftkit/llm/client.py): one backoff for the whole endpoint on 429/5xx/timeouts (Retry-After
honoured, concurrency halved, grown back on success), optional --rpm/--tpm, a circuit breaker that declares
the endpoint down (--breaker-failures, --breaker-window), and a stop at once on 401/402/403/404 or an
exhausted balance or quota.

No API key: --teacher local --teacher-model FOLDER_OR_HUB_ID serves an open model with vLLM (.venv-vllm) on
127.0.0.1 for the run (stopped on every exit path) and asks for the items' JSON schema (guided decoding).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from sftkit.distill import generation as g
from sftkit.io.cli import ScriptParser, UsageError, interrupted, run_script
from sftkit.io.jsonl import BadLines, LockedError, write_json, write_jsonl
from sftkit.io.text import CHINESE_RATIO_HELP
from sftkit.llm import local_teacher as lt
from sftkit.llm.client import add_policy_flags, check_policy, flag_name, policy_kwargs
from sftkit.llm.config import RedactFilter, dotenv, is_local_url, redact, resolve
from sftkit.llm.pricing import estimate_cost
from sftkit.llm.runner import Job, JournaledRun, Target

log = logging.getLogger("gen_SFT_data")
DEFAULT_BASE_URL = "https://api.deepseek.com"


def build_parser() -> argparse.ArgumentParser:
    ap = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = ap.add_argument
    a("--config", help="JSON file whose keys are any of these flags' names (e.g. max_concurrency); flags given on "
                       "the command line win over it")
    a("--api-key", default="", help="API key (else $OPENAI_API_KEY, else .env, else config api_key). Never printed")
    a("--base-url", default="", help=f"API base URL (else $OPENAI_BASE_URL, .env, config; default {DEFAULT_BASE_URL})")
    a("--model", default="deepseek-chat", help="model name sent to the API (default: %(default)s)")
    a("--mode", default="chat", choices=["chat", "reasoner"],
      help="chat sends sampling parameters; reasoner (deepseek-reasoner) sends none and may return reasoning_content")
    a("--out", default="data/raw/hit/generated.jsonl", help="output JSONL of canonical records (default: %(default)s); "
      "the journal, rejects and stats files are written beside it")
    a("--topics-file", help="topics mode: one topic per line (blank lines and # comments skipped)")
    a("--n-per-topic", type=int, default=6, help="items asked for per topic request (default: %(default)s)")
    a("--slices", help="slices mode: JSONL of {\"id\"?, \"content\", \"metadata\"?} knowledge slices")
    a("--samples-per-slice", type=int, default=3, help="requests (one pair each) per slice (default: %(default)s)")
    a("--source", default="", help="`source` field of the records (default: hit for topics, slices for slices)")
    a("--prompt-file", help="prompt template replacing the default: placeholders {topic} {n} (topics) or "
                            "{content} {angle} {index} {total} (slices)")
    a("--max-concurrency", type=int, default=50, help="requests in flight at once (default: %(default)s)")
    a("--temperature", type=float, default=0.8, help="sampling temperature, chat mode only (default: %(default)s)")
    a("--top-p", type=float, default=None, help="nucleus sampling, chat mode only (default: not sent)")
    a("--max-tokens", type=int, default=4096, help="max completion tokens per request (default: %(default)s)")
    a("--json-mode", action="store_true",
      help='send response_format {"type": "json_object"} (and ask for {"items": [...]})')
    a("--timeout", type=float, default=180.0, help="seconds per request attempt (default: %(default)s)")
    a("--retries", type=int, default=5, help="retries per request on 429/5xx/timeouts/resets/empty bodies")
    add_policy_flags(ap)
    a("--seed", type=int, default=0, help="seeds the retry jitter; sent to the API as `seed` in chat mode")
    a("--limit", type=int, default=0, help="only the first N topics or slices (0 = all)")
    a("--keep-reasoning", action="store_true", help="keep reasoning_content in each record's meta")
    a("--retry-failed", action="store_true", help="re-request journaled responses that held no parsable JSON")
    a("--dry-run", action="store_true",
      help="print the plan, one rendered prompt and a token/cost estimate; send nothing")
    a("--lengths", default="", help=f"character bounds per field, FIELD=MIN:MAX,... (topics default {g.TOPIC_BOUNDS}; "
                                    f"slices default {g.SLICE_BOUNDS})")
    a("--min-chinese-ratio", type=float, default=0.6,
      help=f"floor for every non-empty field (default: %(default)s). {CHINESE_RATIO_HELP}")
    a("--price-input", type=float, help="USD per 1M input tokens (cache miss), overrides the built-in table")
    a("--price-cached", type=float, help="USD per 1M cached input tokens")
    a("--price-output", type=float, help="USD per 1M output tokens")
    a("--log", default="INFO", help="log level (default: %(default)s)")
    lt.add_teacher_flags(ap)
    return ap


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = build_parser()
    pre, _ = ap.parse_known_args(argv)
    cfg: dict[str, Any] = {}
    if pre.config:
        try:
            cfg = orjson.loads(Path(pre.config).read_bytes())
        except (OSError, orjson.JSONDecodeError) as e:
            raise UsageError(f"cannot read --config {pre.config}: {e}") from None
        if not isinstance(cfg, dict):
            raise UsageError(f"--config {pre.config}: must be a JSON object")
        known = {act.dest for act in ap._actions}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise UsageError(f"--config {pre.config}: unknown key(s) {', '.join(unknown)}")
        ap.set_defaults(**{k: v for k, v in cfg.items() if k not in ("api_key", "base_url")})
    args = ap.parse_args(argv)
    env = dotenv()
    args.api_key = resolve(args.api_key, env, "OPENAI_API_KEY", cfg.get("api_key"))
    args.base_url = resolve(args.base_url, env, "OPENAI_BASE_URL", cfg.get("base_url")) or DEFAULT_BASE_URL
    if bool(args.topics_file) == bool(args.slices):
        raise UsageError("give exactly one of --topics-file (topics mode) or --slices (slices mode)")
    if args.n_per_topic < 1 or args.samples_per_slice < 1 or args.max_concurrency < 1:
        raise UsageError("--n-per-topic, --samples-per-slice and --max-concurrency must be >= 1")
    problem = check_policy(policy_kwargs(args), flag_name)
    if problem:
        raise UsageError(problem)
    if args.teacher == "local":
        args.model = args.teacher_model  # requests (and their journal keys) name the model as given
        args.base_url = "local teacher"  # the server's URL once it runs
    elif not args.api_key and not args.dry_run and not is_local_url(args.base_url):
        raise UsageError(lt.NO_TEACHER)
    return args


def make_plan(args: argparse.Namespace, bad: BadLines) -> tuple[str, list[g.Request], g.Bounds]:
    mode = "topics" if args.topics_file else "slices"
    path = args.topics_file or args.slices
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such file")
    try:
        if mode == "topics":
            template = g.read_prompt_file(args.prompt_file, ("{topic}", "{n}")) if args.prompt_file else g.TOPIC_PROMPT
        else:
            template = g.read_prompt_file(args.prompt_file, ("{content}",)) if args.prompt_file else g.SLICE_PROMPT
        bounds = g.Bounds.parse(args.lengths or (g.TOPIC_BOUNDS if mode == "topics" else g.SLICE_BOUNDS),
                                args.min_chinese_ratio)
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from None
    if mode == "topics":
        units = g.read_topics(path, bad)
        if args.limit:
            units = units[: args.limit]
        plan = g.plan_topics(units, args.n_per_topic, args.model, template, args.json_mode)
    else:
        slices = g.read_slices(path, bad)
        if args.limit:
            slices = slices[: args.limit]
        plan = g.plan_slices(slices, args.samples_per_slice, args.model, template)
    if not plan:
        raise UsageError(f"{path}: no usable {mode} (bad lines: {bad.count})")
    return mode, plan, bounds


def dry_run(args: argparse.Namespace, mode: str, plan: list[g.Request], pending: list[g.Request]) -> None:
    usage = g.dry_run_estimate(pending, items_per_request=args.n_per_topic if mode == "topics" else 1,
                               max_tokens=args.max_tokens)
    cost = estimate_cost(args.model, usage, price_overrides(args))
    print(f"mode: {mode}; units: {len({r.unit_id for r in plan})}; requests: {len(plan)} "
          f"({len(plan) - len(pending)} already journaled, {len(pending)} to send)")
    print(f"model: {args.model} at {args.base_url}; max concurrency {args.max_concurrency}")
    print("--- first request ---")
    for m in (pending or plan)[0].messages:
        print(f"[{m['role']}]\n{m['content']}")
    print("---")
    print(f"estimate: ~{usage.prompt_tokens:,} prompt + ~{usage.completion_tokens:,} completion tokens"
          + (f", ~${cost:.4f}" if cost is not None else " (no price known for this model)"))
    print("dry run: no request sent")


def price_overrides(args: argparse.Namespace) -> dict[str, float | None]:
    return {"input": args.price_input, "cached": args.price_cached, "output": args.price_output}


def target(args: argparse.Namespace) -> Target:
    """The endpoint every generation request goes to."""
    return Target(args.base_url, args.api_key, args.model, max_concurrency=args.max_concurrency,
                  timeout=args.timeout, retries=args.retries, policy=policy_kwargs(args),
                  label=f"endpoint {args.base_url} (model {args.model})")


def pending_requests(args: argparse.Namespace, run: JournaledRun, plan: list[g.Request], mode: str, source: str,
                     bounds: g.Bounds) -> list[Job]:
    """The requests to send: those not journaled, and with --retry-failed those whose answer held no JSON."""
    options = g.request_options(args.mode, temperature=args.temperature, top_p=args.top_p,
                                max_tokens=args.max_tokens, json_mode=args.json_mode, seed=args.seed)
    if args.teacher == "local" or args.json_schema:
        options["response_format"] = g.response_format(mode, args.n_per_topic, bounds, args.json_mode)
    jobs = g.jobs_for(plan, options)
    redo = None
    if args.retry_failed:
        bad_keys = g.unparsable_keys(plan, run.index(), mode=mode, source=source, bounds=bounds)
        redo = lambda e: e["key"] in bad_keys  # noqa: E731
    return run.pending(jobs, redo)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    problem = lt.teacher_problem(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return problem.exit_code
    logging.basicConfig(level=args.log.upper(), format="%(asctime)s %(levelname)s %(message)s")
    SECRETS.append(args.api_key)
    redactor = RedactFilter([args.api_key])
    for h in logging.getLogger().handlers:
        h.addFilter(redactor)

    out = Path(args.out)
    paths = {k: out.with_name(out.stem + suffix) for k, suffix in
             (("journal", ".journal.jsonl"), ("rejects", ".rejects.jsonl"), ("stats", ".stats.json"))}
    bad = BadLines(log)
    try:
        mode, plan, bounds = make_plan(args, bad)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    source = args.source or ("hit" if mode == "topics" else "slices")

    if args.dry_run:  # reads the journal as it is: no lock, nothing created or repaired
        view = JournaledRun(paths["journal"], g.KEY_FIELDS, read_only=True)
        dry_run(args, mode, plan, [j.data for j in pending_requests(args, view, plan, mode, source, bounds)])
        return 0
    try:
        run = JournaledRun(paths["journal"], g.KEY_FIELDS)
    except LockedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write the journal beside --out {out}: {e}", file=sys.stderr)
        return 1
    pending = pending_requests(args, run, plan, mode, source, bounds)

    log.info("%s mode: %d requests planned, %d journaled, %d to send -> %s",
             mode, len(plan), len(plan) - len(pending), len(pending), out)
    t0 = time.monotonic()
    result = None
    try:
        if pending:
            with lt.teacher_endpoint(args):  # --teacher local: the server runs for exactly this block
                result = run.send(pending, {"": target(args)}, g.GenerationStage(args.model), seed=args.seed,
                                  bar={"desc": "requests", "unit": "req"})
    except lt.TeacherError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (run_script): finished requests are journaled
        return interrupted(e)
    finally:
        run.close()
    elapsed = time.monotonic() - t0
    if result is not None and result.write_error:  # the disk is full or the file unwritable: outputs wait
        print(f"error: {result.write_error}; the journal keeps every answer before it: make room, then rerun "
              "the same command to send only what is missing", file=sys.stderr)
        return 1

    done = run.index()  # the journal's entries in memory include this run's appends; no re-read
    built = g.build_records(plan, done, mode=mode, source=source, bounds=bounds, keep_reasoning=args.keep_reasoning)
    stats = g.run_stats(mode=mode, model=args.model, base_url=args.base_url, out=str(out), bad=bad, plan=plan,
                        sent=len(pending), result=result, built=built, done=done,
                        overrides=price_overrides(args), elapsed=elapsed)
    try:
        write_jsonl(out, built.records)
        write_jsonl(paths["rejects"], built.rejects)
        write_json(paths["stats"], stats)
    except OSError as e:
        print(f"error: cannot write the output: {e}; every answer received is in the journal "
              f"{paths['journal']}: make room and rerun the same command", file=sys.stderr)
        return 1
    print("\n".join(g.summary_lines(stats, paths)))
    missing = stats["requests"]["missing"]
    again = f"{missing} request(s) still missing: rerun the same command to send only those"
    failure = stats["endpoint"]["failure"] if stats["endpoint"] else None
    if failure:
        print(f"error: {failure}; {again}", file=sys.stderr)
        return 1
    if missing:
        print(f"error: {again}", file=sys.stderr)
        return 1
    return 0


SECRETS: list[str] = []


def cli(argv: list[str] | None = None) -> int:
    """main() with a last guard: an unexpected error prints its traceback with the key masked, exit 1."""
    try:
        return main(argv)
    except Exception:
        import traceback

        print(redact(traceback.format_exc(), SECRETS), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(run_script(cli))
