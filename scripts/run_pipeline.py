#!/usr/bin/env python
"""Knowledge slices -> generated SFT records -> judged, filtered, deduped train/val (seed 000's entry point).

  python scripts/run_pipeline.py --input slices.jsonl --output ./distilled_dataset --config config.json

Step 1 runs gen_SFT_data.py in slices mode (`generator` in the config: api_base, model, max_concurrent,
api_key / api_key_env, and optionally rpm, tpm, breaker_failures, breaker_window, backoff_base, backoff_max,
temperature, top_p, max_tokens, lengths ("instruction=4:40,output=8:400"), min_chinese_ratio;
`samples_per_slice`), writing OUTPUT/generated.jsonl and its journal. Step 2 runs
judge.py on those records with the slices (`judges`, `dimensions`, thresholds, `dedup`, split), writing
train.jsonl / val.jsonl / scored.jsonl / generated_raw.jsonl / metadata.json into OUTPUT. Both steps journal
their API calls, so rerunning the same command after a crash or kill pays only for what is missing.

No API key: `--teacher local --teacher-model FOLDER_OR_HUB_ID` (or `generator.local_model` in the config, serving
settings under `generator.local_teacher`) serves the generator with vLLM on 127.0.0.1, asked for the items' JSON
schema; judges with `local_model` are served the same way. One pool of servers runs for the whole chain: a judge
naming the generator's model uses the same server. Every server stops on every exit path.

Every key is checked before anything is sent (exit 2 with one line when one is missing). Keys reach the
generator through its environment and the judges in-process: never on a command line, never printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sftkit.distill import judging as jg  # noqa: E402
from sftkit.io.cli import ScriptParser, run_script  # noqa: E402
from sftkit.llm import local_teacher as lt  # noqa: E402
from sftkit.llm.client import POLICY_DEFAULTS, check_policy, flag_name  # noqa: E402
from sftkit.llm.config import dotenv, is_local_url, resolve  # noqa: E402

# generator settings passed to gen_SFT_data.py as its flags (a small local teacher may need looser item bounds)
GEN_SETTINGS = ("temperature", "top_p", "max_tokens", "lengths", "min_chinese_ratio")


def build_parser() -> argparse.ArgumentParser:
    ap = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = ap.add_argument
    a("--input", required=True, help="knowledge slices JSONL: {\"id\"?, \"content\", \"metadata\"?} per line")
    a("--output", help="output directory (default: config output_dir, ./distilled_dataset)")
    a("--config", help="JSON config deep-merged over the defaults (judge.py --print-config shows them)")
    a("--stage", choices=["all", "generate", "judge"], default="all",
      help="all: generate then judge; generate or judge: only that step (default: %(default)s)")
    a("--samples-per-slice", type=int, help="records asked for per slice (config samples_per_slice, default 3)")
    a("--format", choices=jg.FORMATS, default="sharegpt", help="train/val format (default: %(default)s)")
    a("--api-key", default="", help="API key for the generator and every judge (else each one's api_key_env from "
                                    "the environment, then .env, then the config). Never printed")
    a("--limit", type=int, default=0, help="only the first N slices (0 = all)")
    lt.add_teacher_flags(ap)
    return ap


def generator_settings(cfg: dict, flag_key: str, env_file: dict[str, str]) -> tuple[str, str, str, int]:
    gen = cfg.get("generator") or {}
    base_url = str(gen.get("api_base") or resolve(None, env_file, "OPENAI_BASE_URL", None))
    model = str(gen.get("model") or "")
    key = resolve(flag_key or None, env_file, str(gen.get("api_key_env") or "OPENAI_API_KEY"),
                  gen.get("api_key") or None)
    if not base_url or not model:
        raise jg.ConfigError("generator needs api_base and model")
    if not key and not is_local_url(base_url):
        raise jg.ConfigError(f"generator ({base_url}) has no API key: set {gen.get('api_key_env') or 'OPENAI_API_KEY'}"
                             " (environment or .env), --api-key, or generator.api_key in the config")
    return base_url, model, key, int(gen.get("max_concurrent") or 5)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env_file = dotenv()
    try:
        if not Path(args.input).is_file():
            raise jg.ConfigError(f"{args.input}: no such file")
        cfg = jg.load_config(args.config)
        out = Path(args.output or cfg["output_dir"])
        per_slice = args.samples_per_slice or int(cfg.get("samples_per_slice") or 3)
        if per_slice < 1:
            raise jg.ConfigError("samples_per_slice must be >= 1")
        gen_cfg = cfg.get("generator") or {}
        if args.teacher == "api" and gen_cfg.get("local_model"):
            args.teacher, args.teacher_model = "local", str(gen_cfg["local_model"])
        settings = lt.settings_from_args(args, prefix="teacher-")
        if args.teacher == "local":
            settings = lt.settings_from_mapping(dict(gen_cfg.get("local_teacher") or {}), base=settings)
            gen_url, gen_model, gen_key = "", args.teacher_model, ""
            gen_conc = int(gen_cfg.get("max_concurrent") or 5)
        else:
            gen_url, gen_model, gen_key, gen_conc = generator_settings(cfg, args.api_key, env_file)
        problem = check_policy({k: v for k, v in (cfg.get("generator") or {}).items() if k in POLICY_DEFAULTS},
                               lambda k: f"generator.{k}")
        if problem:
            raise jg.ConfigError(problem)
        if args.stage != "generate":  # every judge key is checked before the generator spends anything
            dims = jg.dimensions_from_config(cfg)
            rules = jg.rules_from_config(cfg, dims)
            judges = jg.judges_from_config(cfg, flag_key=args.api_key, env_file=env_file)
            if rules.min_votes > len(judges):
                raise jg.ConfigError(f"min_votes is {rules.min_votes} but only {len(judges)} judge(s) are configured")
    except (jg.ConfigError, lt.TeacherError, ValueError, TypeError) as e:
        print(f"run_pipeline.py: {e}", file=sys.stderr)
        return 2
    problem = lt.teacher_problem(args) if args.stage != "judge" else None
    if problem is not None:
        print(f"run_pipeline.py: {problem}", file=sys.stderr)
        return problem.exit_code
    try:
        with lt.TeacherPool(settings) as pool:  # one server per model for the whole chain, stopped on any exit
            return chain(args, cfg, out, per_slice, (gen_url, gen_model, gen_key, gen_conc), pool)
    except lt.TeacherError as e:
        print(f"run_pipeline.py: {e}", file=sys.stderr)
        return e.exit_code


def chain(args: argparse.Namespace, cfg: dict, out: Path, per_slice: int, gen: tuple[str, str, str, int],
          pool: lt.TeacherPool) -> int:
    gen_url, gen_model, gen_key, gen_conc = gen
    generated = out / "generated.jsonl"
    if args.stage in ("all", "generate"):
        schema = []
        if args.teacher == "local":  # gen_SFT_data.py talks to the pool's server as to any local endpoint
            teacher = pool.get(args.teacher_model)
            gen_url, gen_model, schema = teacher.base_url, teacher.model_name, ["--json-schema"]
        elif args.json_schema:
            schema = ["--json-schema"]
        cmd = [sys.executable, str(ROOT / "gen_SFT_data.py"), "--slices", args.input, "--samples-per-slice",
               str(per_slice), "--base-url", gen_url, "--model", gen_model, "--out", str(generated),
               "--max-concurrency", str(gen_conc), *schema]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        for key in (*POLICY_DEFAULTS, *GEN_SETTINGS):  # endpoint policy and sampling/validation: `generator`
            if (cfg.get("generator") or {}).get(key) is not None:
                cmd += [flag_name(key), str(cfg["generator"][key])]
        env = dict(os.environ)
        if gen_key:
            env["OPENAI_API_KEY"] = gen_key  # gen_SFT_data.py reads it; a key on argv would show in `ps`
        print(f"[1/2] generating: {args.input} -> {generated} ({gen_model}, {per_slice} per slice)", flush=True)
        rc = subprocess.run(cmd, env=env, cwd=os.getcwd(), check=False).returncode
        if rc != 0:
            print(f"run_pipeline.py: generation failed (exit {rc}); rerun to resume", file=sys.stderr)
            return rc if rc in (1, 2, 130, 143) else 1
    if args.stage in ("all", "judge"):
        if not generated.is_file():
            print(f"run_pipeline.py: {generated} does not exist; run --stage generate first", file=sys.stderr)
            return 2
        import judge

        jargv = ["--input", str(generated), "--slices", args.input, "--output-dir", str(out), "--format", args.format]
        if args.config:
            jargv += ["--config", args.config]
        if args.api_key:
            jargv += ["--api-key", args.api_key]  # in-process: never on a process command line
        print(f"[2/2] judging: {generated} -> {out}", flush=True)
        rc = judge.main(jargv, pool=pool)
        if rc != 0:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
