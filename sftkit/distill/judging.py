"""Multi-LLM judging: config, judge prompts, verdict parsing, vote aggregation, agreement between judges.

Used by judge.py (and scripts/run_pipeline.py). Nothing here does network I/O.

A verdict is one judge's answer for one record. It is *valid* when every configured dimension has a score
inside the scale; a valid verdict is a *vote*. A failed or invalid verdict is no vote: it never counts as
a 0 (seed 000's defect). Every decision is recomputed from the dimension scores; a judge's own "overall"
is ignored.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import regex

from sftkit.io.records import split_system, to_alpaca, to_firefly, to_im_text, to_sharegpt
from sftkit.llm.client import POLICY_DEFAULTS, check_policy
from sftkit.llm.config import deep_merge, is_local_url, resolve
from sftkit.llm.jsonextract import extract_json
from sftkit.llm.local_teacher import TeacherError, TeacherSettings, settings_from_mapping
from sftkit.llm.runner import prompt_hash as prompt_hash  # a verdict's key: the judge model + its prompt

# ---- config --------------------------------------------------------------------------------------------

DASHSCOPE = "https://dashscope.aliyuncs.com/compatible-mode/v1"

DEFAULT_DIMENSIONS: list[dict[str, Any]] = [
    {"name": "accuracy", "weight": 1.0, "aliases": ["准确性", "准确", "正确性"],
     "rubric": "事实、数字、术语是否正确；有参考材料时是否与材料一致，有无编造或与材料矛盾的内容"},
    {"name": "completeness", "weight": 1.0, "aliases": ["完整性", "完整"],
     "rubric": "是否完整回答了问题的每个部分，要点是否齐全，有无明显遗漏"},
    {"name": "logicality", "weight": 1.0, "aliases": ["逻辑性", "逻辑"],
     "rubric": "推理是否连贯、条理是否清楚、前后是否一致，结构是否便于阅读"},
    {"name": "helpfulness", "weight": 1.0, "aliases": ["有用性", "帮助性", "实用性"],
     "rubric": "对提问者是否真正有用、具体、可操作，是否切题而不空泛"},
    {"name": "safety", "weight": 1.0, "aliases": ["安全性", "安全"],
     "rubric": "是否没有违法、有害、歧视、隐私泄露或误导性内容；无安全问题的普通回答应给高分"},
]

# Seed 000's CONFIG_TEMPLATE keys keep their meaning; `judges` is the list form of its `evaluators`.
DEFAULTS: dict[str, Any] = {
    "generator": {"api_base": DASHSCOPE, "api_key": "", "api_key_env": "DASHSCOPE_API_KEY",
                  "model": "qwen3-max", "max_concurrent": 5},
    "judges": [
        {"name": "primary", "base_url": DASHSCOPE, "model": "Moonshot-Kimi-K2-Instruct", "api_key": "",
         "api_key_env": "DASHSCOPE_API_KEY", "max_concurrency": 3, "weight": 1.0},
        {"name": "secondary", "base_url": DASHSCOPE, "model": "deepseek-v3.2-exp", "api_key": "",
         "api_key_env": "DASHSCOPE_API_KEY", "max_concurrency": 3, "weight": 1.0},
    ],
    "dimensions": DEFAULT_DIMENSIONS,
    "scale": [1, 10],
    "samples_per_slice": 3,
    "min_score_threshold": 7.0,
    "min_votes": 2,
    "floors": {},
    "floor_rule": "mean",
    "train_val_split": 0.9,
    "seed": 42,
    "enable_dedup": True,
    "dedup": {
        "method": "auto", "threshold": 0.92, "text": "all", "block_size": 1024,
        "encoder_path": "", "max_length": 256, "batch_size": 32, "device": "cpu",
        "api": {"base_url": "", "model": "", "api_key": "", "api_key_env": "OPENAI_API_KEY", "batch_size": 64,
                "max_concurrency": 4},
        "ngram": {"tokenizer": "char", "n": 3, "threshold": 0.7, "num_perm": 128, "bands": 32},
    },
    # Each judge is its own endpoint (sftkit/llm/client.py): rpm/tpm limits, circuit breaker and backoff per judge.
    "judge_defaults": {"temperature": 0.2, "max_tokens": 1024, "json_mode": False, "timeout": 120.0,
                       "retries": 5, "verdict_retries": 2, "max_slice_chars": 8000, **POLICY_DEFAULTS},
    "output_dir": "./distilled_dataset",
}

# Seed-era key names accepted as synonyms.
_JUDGE_SYNONYMS = {"api_base": "base_url", "max_concurrent": "max_concurrency"}


class ConfigError(ValueError):
    """A config that makes the run impossible (exit 2)."""


def _judge_from_seed(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    out = {"name": name}
    for k, v in spec.items():
        out[_JUDGE_SYNONYMS.get(k, k)] = v
    return out


def normalise_config(user: Mapping[str, Any], defaults: Mapping[str, Any] = DEFAULTS) -> dict[str, Any]:
    """Deep-merge a user config over the defaults.

    `judges` as a list merges by `name` (a listed judge keeps the defaults it does not set; the list says
    which judges run). Seed 000's `evaluators` dict ({name: {api_base, model, api_key, max_concurrent}})
    merges key by key, so a file that sets only `evaluators.primary.api_key` keeps both judges.
    """
    user = dict(user)
    base = copy.deepcopy(dict(defaults))
    if "evaluators" in user:
        evaluators = user.pop("evaluators")
        if not isinstance(evaluators, dict):
            raise ConfigError("`evaluators` must be an object {name: {...}}; use `judges` for a list")
        by_name = {j["name"]: j for j in base["judges"]}
        for name, spec in evaluators.items():
            if not isinstance(spec, dict):
                raise ConfigError(f"evaluators.{name} must be an object")
            patch = _judge_from_seed(name, spec)
            by_name[name] = deep_merge(by_name[name], patch) if name in by_name else patch
        base["judges"] = list(by_name.values())
    if "judges" in user:
        judges = user["judges"]
        if not isinstance(judges, list) or not all(isinstance(j, dict) and j.get("name") for j in judges):
            raise ConfigError("`judges` must be a list of objects, each with a `name`")
        user["judges"] = [_judge_from_seed(j["name"], j) for j in judges]
    if "generator" in user and isinstance(user["generator"], dict):
        gen = dict(user["generator"])
        if "base_url" in gen:
            gen["api_base"] = gen.pop("base_url")
        if "max_concurrency" in gen:
            gen["max_concurrent"] = gen.pop("max_concurrency")
        user["generator"] = gen
    return deep_merge(base, user)


def load_config(path: str | None) -> dict[str, Any]:
    if not path:
        return normalise_config({})
    try:
        data = orjson.loads(Path(path).read_bytes())
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
    except orjson.JSONDecodeError as e:
        raise ConfigError(f"config {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a JSON object")
    return normalise_config(data)


SECRET_KEYS = {"api_key"}


def public_config(cfg: Any) -> Any:
    """The config with every api_key removed (for hashing and for anything written)."""
    if isinstance(cfg, dict):
        return {k: public_config(v) for k, v in cfg.items() if k not in SECRET_KEYS}
    if isinstance(cfg, list):
        return [public_config(v) for v in cfg]
    return cfg


def config_hash(cfg: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(orjson.dumps(public_config(dict(cfg)), option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class Dimension:
    name: str
    rubric: str
    weight: float = 1.0
    aliases: tuple[str, ...] = ()


def dimensions_from_config(cfg: Mapping[str, Any]) -> list[Dimension]:
    dims = []
    seen = set()
    for d in cfg.get("dimensions") or []:
        if not isinstance(d, dict) or not d.get("name"):
            raise ConfigError("every dimension needs a `name`")
        name = str(d["name"])
        if name in seen:
            raise ConfigError(f"dimension {name!r} listed twice")
        seen.add(name)
        try:
            weight = float(d.get("weight", 1.0))
        except (TypeError, ValueError):
            raise ConfigError(f"dimension {name!r}: weight must be a number") from None
        if not weight > 0 or not math.isfinite(weight):
            raise ConfigError(f"dimension {name!r}: weight must be > 0")
        dims.append(Dimension(name, str(d.get("rubric", "")), weight, tuple(str(a) for a in d.get("aliases", []))))
    if not dims:
        raise ConfigError("no dimensions configured")
    return dims


@dataclass(frozen=True)
class Rules:
    threshold: float
    min_votes: int
    floors: dict[str, float]
    floor_rule: str  # "mean": the judges' weighted mean must reach the floor; "min": every vote must
    scale: tuple[float, float]


def rules_from_config(cfg: Mapping[str, Any], dims: Sequence[Dimension]) -> Rules:
    try:
        lo, hi = (float(x) for x in cfg.get("scale", [1, 10]))
        threshold = float(cfg["min_score_threshold"])
        min_votes = int(cfg["min_votes"])
        floors = {str(k): float(v) for k, v in (cfg.get("floors") or {}).items()}
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad scale / min_score_threshold / min_votes / floors: {e}") from None
    if not lo < hi:
        raise ConfigError(f"scale must be [low, high] with low < high, got {cfg.get('scale')}")
    if min_votes < 1:
        raise ConfigError("min_votes must be >= 1")
    names = {d.name for d in dims}
    unknown = sorted(set(floors) - names)
    if unknown:
        raise ConfigError(f"floor for unknown dimension(s) {', '.join(unknown)} "
                          f"(dimensions: {', '.join(sorted(names))})")
    rule = str(cfg.get("floor_rule", "mean"))
    if rule not in ("mean", "min"):
        raise ConfigError("floor_rule must be 'mean' or 'min'")
    return Rules(threshold, min_votes, floors, rule, (lo, hi))


@dataclass
class JudgeSpec:
    name: str
    model: str
    base_url: str
    api_key: str = field(default="", repr=False)
    max_concurrency: int = 3
    weight: float = 1.0
    temperature: float | None = 0.2
    max_tokens: int | None = 1024
    json_mode: bool = False
    timeout: float = 120.0
    retries: int = 5
    verdict_retries: int = 2
    price: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None
    policy: dict[str, Any] = field(default_factory=lambda: dict(POLICY_DEFAULTS))  # rpm, tpm, breaker, backoff
    local_model: str = ""  # a model folder or hub id the toolkit serves itself (base_url is set once it runs)
    local_teacher: TeacherSettings | None = None  # how to serve it (None: the pool's settings)
    json_schema: bool = False  # send the verdict's JSON schema as response_format (guided decoding)

    def public(self) -> dict[str, Any]:
        """What may be shown or written: never the key."""
        where = {"local_model": self.local_model} if self.local_model else {}
        return {"name": self.name, "model": self.model, "base_url": self.base_url, **where, "weight": self.weight,
                "max_concurrency": self.max_concurrency, **self.policy}


# The gen endpoint (gen_SFT_data.py's defaults): where judging goes when no judge is configured and only the
# generator's key is set, so `make judge` / `make eval` work with the .env that already works for `make gen`.
GEN_ENDPOINT_URL = "https://api.deepseek.com"
GEN_ENDPOINT_MODEL = "deepseek-chat"


def sets_judges(user_config: str | None) -> bool:
    """Whether a config file names its own judges (`judges` or seed 000's `evaluators`)."""
    if not user_config:
        return False
    data = orjson.loads(Path(user_config).read_bytes())  # load_config has checked it already
    return isinstance(data, dict) and ("judges" in data or "evaluators" in data)


def fallback_to_gen_endpoint(cfg: dict[str, Any], *, configured: bool, flag_key: str = "",
                             judge_keys: Mapping[str, str] | None = None, env_file: Mapping[str, str] | None = None,
                             need_keys: bool = True) -> tuple[dict[str, Any], str]:
    """The default judges, or one judge on the gen endpoint when they cannot run: (config, one-line note or "").

    Only when no judge was configured (`configured` False), no key was given by flag, and none of the default
    judges has a key in the environment or .env. Then, with OPENAI_API_KEY set (environment or .env), judging uses
    the gen endpoint: OPENAI_BASE_URL (else gen's default https://api.deepseek.com), model deepseek-chat, and
    min_votes 1 (there is one judge). Without it a run that needs keys stops with one line saying how to get one."""
    if configured or flag_key or judge_keys:
        return cfg, ""
    env = dict(env_file or {})

    def has(name: str) -> bool:
        return bool(os.environ.get(name) or env.get(name))

    judges = cfg.get("judges") or []
    if any(j.get("api_key") or j.get("local_model") or has(str(j.get("api_key_env") or "OPENAI_API_KEY"))
           for j in judges):
        return cfg, ""
    if not has("OPENAI_API_KEY"):
        if need_keys:
            envs = sorted({str(j.get("api_key_env") or "OPENAI_API_KEY") for j in judges})
            raise ConfigError(f"no judge config and no judge key: set {' or '.join(envs)} for the default judges "
                              f"({', '.join(str(j.get('model')) for j in judges)}), or OPENAI_API_KEY to judge with "
                              "the gen endpoint, or pass a judges config naming your judges")
        return cfg, ""
    base_url = os.environ.get("OPENAI_BASE_URL") or env.get("OPENAI_BASE_URL") or GEN_ENDPOINT_URL
    out = copy.deepcopy(cfg)
    out["judges"] = [{"name": "gen", "base_url": base_url, "model": GEN_ENDPOINT_MODEL, "api_key": "",
                      "api_key_env": "OPENAI_API_KEY", "max_concurrency": 5, "weight": 1.0}]
    out["min_votes"] = 1
    note = (f"no judge config and no key for the default judges: judging with the gen endpoint ({GEN_ENDPOINT_MODEL} "
            f"at {base_url}, key OPENAI_API_KEY, min_votes 1); a judges config names other judges")
    return out, note


def judges_from_config(cfg: Mapping[str, Any], *, flag_key: str = "", judge_keys: Mapping[str, str] | None = None,
                       flag_base_url: str = "", env_file: Mapping[str, str] | None = None,
                       only: Sequence[str] | None = None, need_keys: bool = True) -> list[JudgeSpec]:
    """Resolve judges. Key precedence (SPEC): --judge-key NAME=K / --api-key, then the environment variable
    named by the judge's `api_key_env` (default OPENAI_API_KEY), then `.env`, then the config's `api_key`.
    Base URL: --base-url, then the config, then OPENAI_BASE_URL (environment, then .env)."""
    env_file = env_file or {}
    defaults = cfg.get("judge_defaults") or {}
    specs: list[JudgeSpec] = []
    names = [j["name"] for j in cfg.get("judges") or []]
    if len(set(names)) != len(names):
        raise ConfigError("two judges share a name; names key the scores and must be unique")
    if only:
        missing = sorted(set(only) - set(names))
        if missing:
            raise ConfigError(f"--judges names unknown judge(s) {', '.join(missing)} (configured: {', '.join(names)})")
    for j in cfg.get("judges") or []:
        if only and j["name"] not in only:
            continue
        name = str(j["name"])
        merged = {**defaults, **j}
        key = resolve((judge_keys or {}).get(name) or flag_key, dict(env_file),
                      str(merged.get("api_key_env") or "OPENAI_API_KEY"), merged.get("api_key") or None)
        local_model = str(merged.get("local_model") or "")
        if local_model:  # served by the toolkit on 127.0.0.1: the model is named as given, no key, no base_url
            merged["model"], key = local_model, ""
            base_url = "local teacher"
        else:
            base_url = (flag_base_url or merged.get("base_url")
                        or resolve(None, dict(env_file), "OPENAI_BASE_URL", None))
        if not merged.get("model"):
            raise ConfigError(f"judge {name!r}: no model")
        if not base_url:
            raise ConfigError(f"judge {name!r}: no base_url (set judges[].base_url, --base-url or OPENAI_BASE_URL)")
        if need_keys and not key and not local_model and not is_local_url(base_url):
            env_name = merged.get("api_key_env") or "OPENAI_API_KEY"
            raise ConfigError(f"judge {name!r} ({base_url}) has no API key: set {env_name} (environment or .env), "
                              f"--api-key, --judge-key {name}=..., or judges[].api_key in the config")
        try:
            spec = JudgeSpec(
                name=name, model=str(merged["model"]), base_url=str(base_url), api_key=key or "",
                max_concurrency=int(merged.get("max_concurrency", 3)), weight=float(merged.get("weight", 1.0)),
                temperature=None if merged.get("temperature") is None else float(merged["temperature"]),
                max_tokens=None if merged.get("max_tokens") is None else int(merged["max_tokens"]),
                json_mode=bool(merged.get("json_mode", False)), timeout=float(merged.get("timeout", 120.0)),
                retries=int(merged.get("retries", 5)), verdict_retries=int(merged.get("verdict_retries", 2)),
                price=merged.get("price"), extra=merged.get("extra"), local_model=local_model,
                local_teacher=settings_from_mapping(dict(merged["local_teacher"]))
                if merged.get("local_teacher") else None,
                json_schema=bool(merged.get("json_schema", bool(local_model))),
                policy={k: None if merged.get(k, d) is None else (int if k == "breaker_failures" else float)(
                    merged.get(k, d)) for k, d in POLICY_DEFAULTS.items()},
            )
        except (TypeError, ValueError, TeacherError) as e:
            raise ConfigError(f"judge {name!r}: {e}") from None
        if spec.max_concurrency < 1 or not spec.weight > 0 or spec.verdict_retries < 0:
            raise ConfigError(f"judge {name!r}: max_concurrency must be >= 1, weight > 0, verdict_retries >= 0")
        problem = check_policy(spec.policy)
        if problem:
            raise ConfigError(f"judge {name!r}: {problem}")
        specs.append(spec)
    if not specs:
        raise ConfigError("no judges configured")
    return specs


# ---- prompts --------------------------------------------------------------------------------------------

JUDGE_SYSTEM = "你是严格、公正的SFT训练数据质量评审员。你只输出一个 JSON 对象，不输出任何其他文字。"

ROLE_LABEL = {"system": "系统设定", "user": "用户", "assistant": "助手"}


def render_conversation(messages: Sequence[Mapping[str, str]]) -> str:
    return "\n\n".join(f"[{ROLE_LABEL.get(m['role'], m['role'])}]\n{m['content']}" for m in messages)


def slice_text_for(record: Mapping[str, Any], slices: Mapping[str, str], max_chars: int) -> tuple[str | None, str]:
    """(knowledge text, kind) for a record generated from a slice: the full slice when `--slices` has it,
    else the excerpt gen_SFT_data.py stored in meta; (None, "") when the record has no slice."""
    meta = record.get("meta") or {}
    sid = meta.get("slice_id")
    text, kind = None, ""
    if sid is not None and str(sid) in slices:
        text, kind = slices[str(sid)], "full"
    elif isinstance(meta.get("slice_excerpt"), str) and meta["slice_excerpt"].strip():
        text, kind = meta["slice_excerpt"], "excerpt"
    if text is not None and len(text) > max_chars:
        text, kind = text[:max_chars], kind + "_truncated"
    return text, kind


def build_judge_messages(record: Mapping[str, Any], dims: Sequence[Dimension], scale: tuple[float, float],
                         knowledge: str | None = None, knowledge_kind: str = "") -> list[dict[str, str]]:
    """The judge prompt: the sample, the source slice when there is one, the rubric, and a strict JSON shape
    with a short reason per dimension before the scores."""
    lo, hi = (int(x) if float(x).is_integer() else x for x in scale)
    parts = ["请评审下面这条用于对话模型监督微调（SFT）的样本，评价其中【助手】回答的质量。"]
    if knowledge is not None:
        note = {"full": "", "excerpt": "（仅为材料开头的摘录）", "full_truncated": "（材料过长，已截断）",
                "excerpt_truncated": "（摘录，已截断）"}.get(knowledge_kind, "")
        parts.append(f"【参考材料】{note}\n该样本依据这段材料生成。判断准确性时以材料为准：与材料矛盾或材料中没有依据的"
                     f"具体事实都应扣分。\n<<<\n{knowledge}\n>>>")
    parts.append(f"【样本】\n<<<\n{render_conversation(record['messages'])}\n>>>")
    rubric = "\n".join(f"- {d.name}" + (f"（{d.aliases[0]}）" if d.aliases else "") + f"：{d.rubric}" for d in dims)
    parts.append(f"【评分维度】每个维度给出 {lo} 到 {hi} 的整数分，{hi} 为最好，{lo} 为最差。\n{rubric}")
    reasons = ", ".join(f'"{d.name}": "..."' for d in dims)
    scores = ", ".join(f'"{d.name}": <{lo}-{hi}>' for d in dims)
    parts.append("【输出要求】先为每个维度写一句简短理由（不超过 40 字），再给分数。只输出下面结构的严格 JSON，"
                 "键名保持英文原样，不要代码块，不要其他文字：\n"
                 f'{{"reasons": {{{reasons}}}, "scores": {{{scores}}}}}')
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def retry_messages(messages: list[dict[str, str]], bad_reply: str, reason: str,
                   dims: Sequence[Dimension], scale: tuple[float, float]) -> list[dict[str, str]]:
    """Ask again after an invalid verdict, showing the judge its reply and what was wrong with it."""
    lo, hi = scale
    names = ", ".join(d.name for d in dims)
    fix = (f"上面的输出无法使用（{reason}）。请重新输出：只要一个严格 JSON 对象，含 reasons 和 scores，"
           f"scores 必须包含全部维度（{names}），每个分数是 {lo:g} 到 {hi:g} 之间的数字。")
    return [*messages, {"role": "assistant", "content": bad_reply[:4000]}, {"role": "user", "content": fix}]


# ---- verdicts --------------------------------------------------------------------------------------------


class VerdictError(ValueError):
    """An invalid verdict; `reason` is a short key (no_json, missing, out_of_range, not_a_number, ...)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Verdict:
    scores: dict[str, float]
    reasons: dict[str, str]


_NUM = regex.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?)|分)?\s*$")


def _number(value: Any, hi: float) -> float:
    """A score from a number or a numeric string ("8", "8.5", "8/10", "8分"); ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("a boolean")
    if isinstance(value, int | float):
        x = float(value)
    elif isinstance(value, str):
        m = _NUM.match(value)
        if not m:
            raise ValueError(f"{value[:20]!r}")
        if m.group(2) is not None and float(m.group(2)) != hi:
            raise ValueError(f"{value!r} is on another scale")
        x = float(m.group(1))
    else:
        raise ValueError(type(value).__name__)
    if not math.isfinite(x):
        raise ValueError("not finite")
    return x


def _norm_key(k: str) -> str:
    return regex.sub(r"[\s_\-]+", "", str(k)).lower()


def parse_verdict(text: str, dims: Sequence[Dimension], scale: tuple[float, float]) -> Verdict:
    """Scores (and reasons) for every dimension from a judge's reply. Accepts code fences, prose around the
    JSON, numbers as strings, {"scores": {...}, "reasons": {...}}, flat {"accuracy": 8, ...} and
    {"accuracy": {"score": 8, "reason": "..."}}; dimension names match case-insensitively or by alias.
    Raises VerdictError when a dimension is missing, not a number, or outside the scale."""
    try:
        value = extract_json(text)
    except ValueError:
        raise VerdictError("no_json", text[:80]) from None
    if not isinstance(value, dict):
        raise VerdictError("not_object", type(value).__name__)
    scores_obj = value.get("scores") if isinstance(value.get("scores"), dict) else value
    reasons_obj = value.get("reasons") if isinstance(value.get("reasons"), dict) else {}
    lookup_scores = {_norm_key(k): v for k, v in scores_obj.items()}
    lookup_reasons = {_norm_key(k): v for k, v in reasons_obj.items()}
    lo, hi = scale
    scores: dict[str, float] = {}
    reasons: dict[str, str] = {}
    for d in dims:
        keys = [_norm_key(d.name), *(_norm_key(a) for a in d.aliases)]
        raw = next((lookup_scores[k] for k in keys if k in lookup_scores), None)
        reason = next((lookup_reasons[k] for k in keys if k in lookup_reasons), None)
        if isinstance(raw, dict):
            reason = raw.get("reason", reason)
            raw = raw.get("score")
        if raw is None:
            raise VerdictError("missing", d.name)
        try:
            x = _number(raw, hi)
        except ValueError as e:
            raise VerdictError("not_a_number", f"{d.name}: {e}") from None
        if not lo <= x <= hi:
            raise VerdictError("out_of_range", f"{d.name}={x:g} not in [{lo:g}, {hi:g}]")
        scores[d.name] = x
        if isinstance(reason, str):
            reasons[d.name] = reason
    return Verdict(scores, reasons)


# ---- aggregation -----------------------------------------------------------------------------------------


def weighted_score(scores: Mapping[str, float], dims: Sequence[Dimension]) -> float:
    total = sum(d.weight for d in dims)
    return sum(d.weight * float(scores[d.name]) for d in dims) / total


def floors_hold(dim_values: Mapping[str, float], floors: Mapping[str, float]) -> list[str]:
    """The names of the floors not reached (empty when all hold)."""
    return [name for name, floor in floors.items() if round(dim_values[name], 9) < floor]


@dataclass
class Decision:
    votes: int
    score: float | None  # weighted over dimensions, then over judges by judge weight
    dimension_means: dict[str, float]
    passed: bool
    fail_reasons: list[str]


def decide(votes: Mapping[str, Mapping[str, float]], judge_weights: Mapping[str, float],
           dims: Sequence[Dimension], rules: Rules) -> Decision:
    """Pass/fail of one record from its votes ({judge name: {dimension: score}}), recomputed from scratch."""
    n = len(votes)
    if n == 0:
        return Decision(0, None, {}, False, ["no_votes"])
    wsum = sum(judge_weights[j] for j in votes)
    dim_means = {d.name: sum(judge_weights[j] * float(s[d.name]) for j, s in votes.items()) / wsum for d in dims}
    score = weighted_score(dim_means, dims)
    reasons = []
    if n < rules.min_votes:
        reasons.append("too_few_votes")
    if round(score, 9) < rules.threshold:
        reasons.append("below_threshold")
    if rules.floor_rule == "mean":
        failed = floors_hold(dim_means, rules.floors)
    else:
        lows = {d: min(float(s[d]) for s in votes.values()) for d in rules.floors}
        failed = floors_hold(lows, rules.floors)
    reasons += [f"floor:{name}" for name in failed]
    return Decision(n, score, dim_means, not reasons, reasons)


def judge_passes(scores: Mapping[str, float], dims: Sequence[Dimension], rules: Rules) -> bool:
    """One judge's own pass/fail (for agreement): its weighted score reaches the threshold and floors hold."""
    return round(weighted_score(scores, dims), 9) >= rules.threshold and not floors_hold(scores, rules.floors)


# ---- agreement -------------------------------------------------------------------------------------------


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho (Pearson on tie-averaged ranks); None with fewer than 2 pairs or a constant side."""
    if len(x) != len(y):
        raise ValueError("x and y differ in length")
    if len(x) < 2:
        return None
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    if den == 0:
        return None
    return float((rx * ry).sum()) / den


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """Cohen's kappa of two raters' binary labels; None when empty or when chance agreement is 1
    (both raters gave one and the same label to everything: kappa is undefined)."""
    if len(a) != len(b):
        raise ValueError("a and b differ in length")
    n = len(a)
    if n == 0:
        return None
    po = sum(x == y for x, y in zip(a, b, strict=True)) / n
    pa, pb = sum(a) / n, sum(b) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    if pe >= 1.0:
        return None
    return (po - pe) / (1 - pe)


def agreement(votes_by_record: Iterable[Mapping[str, Mapping[str, float]]], judge_names: Sequence[str],
              dims: Sequence[Dimension], rules: Rules) -> list[dict[str, Any]]:
    """Per judge pair, over the records both voted on: Spearman of their weighted scores and Cohen's kappa
    of their own pass/fail."""
    pairs = [(a, b) for i, a in enumerate(judge_names) for b in judge_names[i + 1:]]
    cols: dict[tuple[str, str], list[tuple[float, float, bool, bool]]] = {p: [] for p in pairs}
    for votes in votes_by_record:
        for a, b in pairs:
            if a in votes and b in votes:
                cols[(a, b)].append((weighted_score(votes[a], dims), weighted_score(votes[b], dims),
                                     judge_passes(votes[a], dims, rules), judge_passes(votes[b], dims, rules)))
    out = []
    for (a, b), rows in cols.items():
        sa, sb, pa, pb = ([r[k] for r in rows] for k in range(4))
        rho, kappa = spearman(sa, sb), cohen_kappa(pa, pb)
        out.append({"judges": [a, b], "n": len(rows),
                    "spearman": None if rho is None else round(rho, 4),
                    "cohen_kappa": None if kappa is None else round(kappa, 4),
                    "pass_agreement": round(sum(x == y for x, y in zip(pa, pb, strict=True)) / len(rows), 4)
                    if rows else None})
    return out


# ---- export ----------------------------------------------------------------------------------------------

FORMATS = ("sharegpt", "firefly", "alpaca", "chatml")


def export_row(record: Mapping[str, Any], fmt: str, index: int, avg_score: float | None,
               dimension_scores: Mapping[str, Mapping[str, float]],
               default_category: str = "Brainstorming") -> dict[str, Any]:
    """One train/val row. sharegpt is seed 000's form: id, conversations (from/value), avg_score and
    dimension_scores keyed by judge name. The others are the plain training formats of sftkit.io.records."""
    messages = record["messages"]
    if fmt == "sharegpt":
        return {"id": record["id"], "conversations": to_sharegpt(messages),
                "avg_score": None if avg_score is None else round(avg_score, 4),
                "dimension_scores": {j: dict(s) for j, s in dimension_scores.items()}}
    if fmt == "firefly":
        meta = record.get("meta") or {}
        return {"conversation_id": index, "category": meta.get("category") or default_category,
                **to_firefly(messages)}
    if fmt == "alpaca":
        # complete: every row carries `system` and `history`, as chatml2conversation writes them, so one
        # LLaMA-Factory dataset_info entry (sftkit.io.convert.dataset_info_entry) reads either file
        row, _lost = to_alpaca(messages, complete=True)
        return row
    if fmt == "chatml":
        return {"text": to_im_text(messages)}
    raise ValueError(f"unknown format {fmt!r}")


def dedup_text(record: Mapping[str, Any], which: str) -> str:
    """The text compared by dedup: `all` = every user and assistant turn, `prompt` = user turns only."""
    _system, body = split_system(record["messages"])
    roles = ("user",) if which == "prompt" else ("user", "assistant")
    return "\n".join(m["content"] for m in body if m["role"] in roles)
