"""What gen_SFT_data.py asks for and what it keeps: prompts, request plans, item validation, records, and the
generation stage on the shared runner (sftkit/llm/runner.py): its jobs, its reader, its stats and summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import regex

from sftkit.io.jsonl import BadLines, iter_jsonl
from sftkit.io.text import chinese_ratio, find_refusal
from sftkit.llm.client import ChatResult, Usage, estimate_tokens
from sftkit.llm.jsonextract import extract_json_list_checked
from sftkit.llm.local_teacher import json_schema_format, slice_schema, topics_schema
from sftkit.llm.runner import Answer, Job, RunResult, Stage, Tally, cost, usage_of
from sftkit.llm.runner import request_key as request_key

SYSTEM_PROMPT = "你是安全、专业的中文教育数据标注助手。"

TOPIC_PROMPT = """你是一名严谨的中文数据标注员，负责为主题相关的中文对话微调（SFT）生成高质量样本。

【输出要求】
- 只输出 JSON（UTF-8，无注释）：一个数组，每个元素是一个对象，字段为：
  - instruction：系统角色对助手的角色设定/任务说明（与主题相关，中文，50~120字）
  - input：用户提问（中文，明确具体，30~120字，尽量结合真实场景）
  - output：助手回答（中文，专业、可信、结构化，200~500字，分点叙述，避免夸张或虚假信息）

【内容边界】
- 不生成违法、色情、仇恨、隐私内容
- 保持中立与专业，不捏造事实；不确定的信息请给出核实途径，而不是编造数字

【生成数量】
- 请为主题《{topic}》一次性生成 {n} 条彼此不同的高质量样本
- 只输出 JSON 数组，不要额外文字
"""

SLICE_PROMPT = """下面是一段领域知识材料。请仅依据这段材料，生成 1 条高质量的中文指令-回答样本，用于对话模型微调。

【材料】
{content}

【要求】
- 本条样本的侧重点：{angle}（第 {index}/{total} 条，与其他条目的问题角度不同）
- 回答只能使用材料中的信息；材料没有的内容不要编造
- 只输出一个 JSON 对象，字段为：
  - instruction：用户的指令或问题（中文，明确具体）
  - input：可选的补充上下文（没有则为空字符串）
  - output：助手回答（中文，准确、完整、有条理）
"""

SLICE_ANGLES = ["事实细节", "概念解释", "操作流程或步骤", "比较与区别", "场景应用", "原因与推理"]

JSON_MODE_SUFFIX = '\n（以 JSON 对象输出：{"items": [ ... ]}，items 为上述数组。）'


@dataclass(frozen=True)
class Request:
    """One API call: `key` identifies it across runs (model + messages), `unit` is the topic or slice."""

    key: str
    unit_index: int
    unit_id: str
    request_index: int
    messages: list[dict[str, str]]
    meta: dict[str, Any]


def read_topics(path: str, bad: BadLines) -> list[str]:
    """Topics one per line; blank lines and `#` comments skipped; duplicates and bad lines reported."""
    topics: list[str] = []
    seen: set[str] = set()
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                bad.add(path, lineno, "invalid UTF-8")
                continue
            if not line or line.startswith("#"):
                continue
            if len(line) > 500:
                bad.add(path, lineno, f"topic too long ({len(line)} characters > 500)")
                continue
            if line in seen:
                bad.add(path, lineno, "duplicate topic")
                continue
            seen.add(line)
            topics.append(line)
    return topics


def read_slices(path: str, bad: BadLines) -> list[dict[str, Any]]:
    """Knowledge slices `{"id"?, "content", "metadata"?}`; a missing id becomes `slice_<line>`."""
    slices: list[dict[str, Any]] = []
    ids: set[str] = set()
    for lineno, obj in iter_jsonl(path, bad):
        if not isinstance(obj, dict):
            bad.add(path, lineno, "not a JSON object")
            continue
        content = obj.get("content")
        if not isinstance(content, str) or not content.strip():
            bad.add(path, lineno, "missing or empty content")
            continue
        sid = str(obj.get("id") or f"slice_{lineno}")
        if sid in ids:
            bad.add(path, lineno, f"duplicate id {sid!r}")
            continue
        meta = obj.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            bad.add(path, lineno, "metadata is not an object")
            continue
        ids.add(sid)
        slices.append({"id": sid, "content": content.strip(), "metadata": meta or {}})
    return slices


def plan_topics(topics: list[str], n: int, model: str, template: str, json_mode: bool) -> list[Request]:
    reqs = []
    for i, topic in enumerate(topics):
        user = template.replace("{topic}", topic).replace("{n}", str(n))
        if json_mode:
            user += JSON_MODE_SUFFIX
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
        reqs.append(Request(request_key(model, messages), i, f"{i:04d}", 0, messages, {"topic": topic}))
    return reqs


def plan_slices(slices: list[dict[str, Any]], k: int, model: str, template: str) -> list[Request]:
    reqs = []
    for i, s in enumerate(slices):
        for j in range(k):
            user = (template.replace("{content}", s["content"]).replace("{angle}", SLICE_ANGLES[j % len(SLICE_ANGLES)])
                    .replace("{index}", str(j + 1)).replace("{total}", str(k)))
            messages = [{"role": "user", "content": user}]
            meta = {"slice_id": s["id"], "slice_excerpt": s["content"][:200], "slice_metadata": s["metadata"]}
            reqs.append(Request(request_key(model, messages), i, s["id"], j, messages, meta))
    return reqs


@dataclass
class Bounds:
    """Inclusive character-length bounds per field and the Chinese-ratio floor."""

    lengths: dict[str, tuple[int, int]]
    min_chinese_ratio: float = 0.6

    @classmethod
    def parse(cls, spec: str, min_chinese_ratio: float) -> Bounds:
        lengths = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            m = regex.fullmatch(r"(instruction|input|output)=(\d+):(\d+)", part)
            if not m:
                raise ValueError(f"bad length bound {part!r} (want FIELD=MIN:MAX)")
            lengths[m.group(1)] = (int(m.group(2)), int(m.group(3)))
        return cls(lengths, min_chinese_ratio)


TOPIC_BOUNDS = "instruction=20:200,input=20:300,output=80:1200"
SLICE_BOUNDS = "instruction=5:500,input=0:3000,output=20:4000"


def validate_item(item: Any, bounds: Bounds) -> tuple[dict[str, str] | None, str]:
    """(clean item, "") or (None, reason)."""
    if not isinstance(item, dict):
        return None, "not_an_object"
    clean = {}
    for k in ("instruction", "input", "output"):
        v = item.get(k, "" if k == "input" else None)
        if v is None:
            return None, f"missing_{k}"
        if not isinstance(v, str):
            return None, f"{k}_not_string"
        clean[k] = v.strip()
    for k, (lo, hi) in bounds.lengths.items():
        n = len(clean[k])
        if n < lo:
            return None, f"{k}_too_short"
        if n > hi:
            return None, f"{k}_too_long"
    for k, v in clean.items():
        if v and chinese_ratio(v) < bounds.min_chinese_ratio:
            return None, f"{k}_low_chinese_ratio"
    if find_refusal(clean["output"]):
        return None, "refusal_or_disclaimer"
    return clean, ""


def item_messages(item: dict[str, str], mode: str) -> list[dict[str, str]]:
    """Topics: instruction is the system role, input the user (seed 004). Slices: instruction (+ input) is
    the user turn (seed 000)."""
    if mode == "topics":
        return [{"role": "system", "content": item["instruction"]}, {"role": "user", "content": item["input"]},
                {"role": "assistant", "content": item["output"]}]
    user = f"{item['instruction']}\n\n{item['input']}" if item["input"] else item["instruction"]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": item["output"]}]


@dataclass
class BuildResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    requests_done: int = 0
    requests_unparsable: int = 0
    requests_repaired: int = 0  # parsed only after the extractor stripped a fence, prose or a broken value
    items_seen: int = 0


def build_records(plan: list[Request], done: dict[str, dict[str, Any]], *, mode: str, source: str,
                  bounds: Bounds, keep_reasoning: bool) -> BuildResult:
    """Turn journaled responses into records, in plan order, so every run over the same journal writes
    the same file. Items repeated verbatim anywhere in the run are kept once."""
    out = BuildResult()
    seen: set[bytes] = set()
    for req in plan:
        entry = done.get(req.key)
        if entry is None:
            continue
        out.requests_done += 1
        try:
            items, repaired = extract_json_list_checked(entry["content"])
        except ValueError as e:
            out.requests_unparsable += 1
            reason = "truncated_json" if entry.get("finish_reason") == "length" else "no_json"
            out.reasons[reason] += 1
            out.rejects.append({"request_key": req.key, "unit": req.unit_id, "reason": reason, "detail": str(e),
                                "raw": entry["content"]})
            continue
        out.requests_repaired += repaired
        for j, raw_item in enumerate(items):
            out.items_seen += 1
            item, reason = validate_item(raw_item, bounds)
            if item is not None:
                fp = orjson.dumps(item, option=orjson.OPT_SORT_KEYS)
                if fp in seen:
                    item, reason = None, "duplicate"
                else:
                    seen.add(fp)
            if item is None:
                out.reasons[reason] += 1
                out.rejects.append({"request_key": req.key, "unit": req.unit_id, "item": j, "reason": reason,
                                    "raw": raw_item})
                continue
            meta = dict(req.meta)
            meta.update({"model": entry.get("model"), "request_key": req.key,
                         "request_usage": entry.get("usage"), "finish_reason": entry.get("finish_reason")})
            if keep_reasoning and entry.get("reasoning_content"):
                meta["reasoning_content"] = entry["reasoning_content"]
            suffix = f"{req.request_index}-{j}" if mode == "slices" else f"{j}"
            out.records.append({"id": f"{source}-{req.unit_id}-{suffix}", "source": source,
                                "messages": item_messages(item, mode), "meta": meta})
    return out


def read_prompt_file(path: str, needed: tuple[str, ...]) -> str:
    text = Path(path).read_text(encoding="utf-8")
    missing = [p for p in needed if p not in text]
    if missing:
        raise ValueError(f"{path}: prompt template lacks placeholder(s) {', '.join(missing)}")
    return text


# ---- the stage on the shared runner ------------------------------------------------------------------------

KEY_FIELDS = ("key",)  # a generation journal entry is keyed by its request key


def request_options(mode: str, *, temperature: float, top_p: float | None, max_tokens: int, json_mode: bool,
                    seed: int) -> dict[str, Any]:
    """The chat options of every generation request. The reasoner rejects or ignores sampling parameters."""
    opts: dict[str, Any] = {"max_tokens": max_tokens, "json_mode": json_mode}
    if mode == "chat":
        opts.update(temperature=temperature, top_p=top_p)
        if seed:
            opts["extra"] = {"seed": seed}
    return opts


def response_format(mode: str, n_per_topic: int, bounds: Bounds, json_mode: bool) -> dict[str, Any]:
    """The JSON schema of one answer as an OpenAI `response_format` (vLLM turns it into guided decoding): topics
    mode n items (under {"items": ...} with --json-mode), slices mode one item, each field within the bounds.
    It is sent as a request option, not part of the request key: journals written without it still resume."""
    if mode == "topics":
        return json_schema_format(topics_schema(n_per_topic, bounds.lengths, wrapped=json_mode), "items")
    return json_schema_format(slice_schema(bounds.lengths), "item")


def jobs_for(plan: list[Request], options: dict[str, Any]) -> list[Job]:
    return [Job(r.key, r.messages, options, data=r) for r in plan]


class GenerationStage(Stage):
    """Every answer is journaled as it came; its items are parsed and validated when the records are built, so
    a change of bounds needs no new request."""

    def __init__(self, model: str) -> None:
        self.model = model

    def read(self, job: Job, result: ChatResult, tally: Tally) -> Answer:
        req: Request = job.data
        return Answer({
            "key": req.key, "unit": req.unit_id, "request": req.request_index, "content": result.content,
            "reasoning_content": result.reasoning_content, "finish_reason": result.finish_reason,
            "usage": result.usage.as_dict(), "model": result.model or self.model, "attempts": result.attempts,
            "seconds": tally.seconds,
        })


def unparsable_keys(plan: list[Request], done: dict[str, dict[str, Any]], *, mode: str, source: str,
                    bounds: Bounds) -> set[str]:
    """Keys of journaled answers that held no parsable JSON (what --retry-failed asks again)."""
    pre = build_records(plan, done, mode=mode, source=source, bounds=bounds, keep_reasoning=False)
    return {r["request_key"] for r in pre.rejects if r["reason"] in ("no_json", "truncated_json")}


def dry_run_estimate(pending: list[Request], *, items_per_request: int, max_tokens: int) -> Usage:
    """Tokens the pending requests would take: their prompts, and ~330 completion tokens per item asked."""
    prompt_tokens = sum(estimate_tokens(m["content"]) for r in pending for m in r.messages)
    per_item = 330  # ~85 + 75 + 350 Chinese characters of instruction/input/output, ~0.6 token each
    completion = min(max_tokens, items_per_request * per_item + 40) * len(pending)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion)


def run_stats(*, mode: str, model: str, base_url: str, out: str, bad: BadLines, plan: list[Request], sent: int,
              result: RunResult | None, built: BuildResult, done: dict[str, dict[str, Any]],
              overrides: dict[str, float | None], elapsed: float) -> dict[str, Any]:
    """The stats file of a generation run (its fields are what scripts and tests read)."""
    total_usage = Usage()
    for r in plan:
        if r.key in done:
            total_usage.add(usage_of(done[r.key]))
    tally = result.targets.get("") if result else None
    cstats = tally.client if tally else None
    failure = tally.failure if tally else None
    endpoint_failure = failure.line() if failure is not None and failure.kind != "stopped" else ""
    failed = dict(tally.failed) if tally else {}
    run_usage = cstats.usage if cstats else Usage()
    return {
        "mode": mode, "model": model, "base_url": base_url, "out": out,
        "input_bad_lines": bad.as_dict(),
        "requests": {
            "planned": len(plan), "journaled_before": len(plan) - sent, "sent_this_run": sent,
            "ok_this_run": cstats.ok if cstats else 0, "failed_this_run": sum(failed.values()),
            "failed_by_reason": failed,
            "failure_details": dict(cstats.failure_details) if cstats else {},
            "retries": sum(cstats.retries.values()) if cstats else 0,
            "retries_by_reason": dict(cstats.retries) if cstats else {},
            "attempts_sent": cstats.attempts if cstats else 0,
            "done": built.requests_done, "missing": len(plan) - built.requests_done,
            "unparsable": built.requests_unparsable,
            "needed_repair": built.requests_repaired,
        },
        "endpoint": {"backoffs": cstats.backoffs, "paused_s": round(cstats.paused_s, 3),
                     "min_concurrency": cstats.min_limit, "failure": endpoint_failure or None}
        if cstats else None,
        "items": {"seen": built.items_seen, "valid": len(built.records), "rejected": sum(built.reasons.values()),
                  "rejected_by_reason": dict(built.reasons)},
        "tokens_this_run": run_usage.as_dict(),
        "tokens_total": total_usage.as_dict(),
        "estimated_cost_usd_this_run": cost(model, run_usage, overrides),
        "estimated_cost_usd_total": cost(model, total_usage, overrides),
        "elapsed_s": round(elapsed, 3),
        "requests_per_s": round(sent / elapsed, 2) if elapsed > 0 and sent else 0.0,
    }


def summary_lines(s: dict[str, Any], paths: dict[str, Path]) -> list[str]:
    r, i, t = s["requests"], s["items"], s["tokens_this_run"]
    c = s["estimated_cost_usd_this_run"]
    return [
        f"== gen_SFT_data: {s['mode']} mode, {s['model']} ==",
        f"requests: {r['planned']} planned, {r['journaled_before']} from journal, {r['sent_this_run']} sent, "
        f"{r['ok_this_run']} ok, {r['failed_this_run']} failed {r['failed_by_reason'] or ''}, {r['retries']} retries",
        f"answers: {r['done'] - r['unparsable'] - r['needed_repair']} parsed as they came, "
        f"{r['needed_repair']} needed repair, {r['unparsable']} unparsable",
        f"items: {i['seen']} returned, {i['valid']} valid, {i['rejected']} rejected {i['rejected_by_reason'] or ''}",
        f"tokens this run: {t['prompt_tokens']:,} prompt ({t['cached_tokens']:,} cached), "
        f"{t['completion_tokens']:,} completion ({t['reasoning_tokens']:,} reasoning); "
        f"cost ~{f'${c:.4f}' if c is not None else 'unknown (no price for this model)'}",
        f"time: {s['elapsed_s']:.1f}s, {s['requests_per_s']} requests/s; "
        f"bad input lines: {s['input_bad_lines']['bad_lines']}",
        f"out: {s['out']} ({i['valid']} records); rejects: {paths['rejects']}; stats: {paths['stats']}",
    ]
