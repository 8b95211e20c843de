"""Answers from both models to every held-out prompt, through sftkit.model.inference (any backend, the same chat
template for both, greedy or seeded), journaled so a rerun generates only what is missing.

An answer's key is sha256 over (side, model, adapter, backend, dtype, template, sampling, prompt messages):
changing any of them asks again, the same command reads the journal."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from sftkit.io.jsonl import BadLines, Journal, iter_jsonl
from sftkit.io.records import RecordError
from sftkit.model import infer_stage
from sftkit.model.inference import (
    EngineOptions,
    Request,
    Sampling,
    engine_stop_ids,
    load_tokenizer,
    open_backend,
    request_from_obj,
)
from sftkit.model.templates import encode_prompt, get_template, stop_token_ids

log = logging.getLogger(__name__)

SIDES = ("base", "tuned")
DEFAULT_TEMPLATE = "minicpm4"
TEMPLATE_FILE = "sftkit_template.json"  # what train/ records beside an adapter or model
CHUNK = 32  # prompts per engine call: each chunk is journaled before the next starts


class EvalInputError(ValueError):
    """Bad usage or unusable input: one line, exit 2."""


@dataclass(frozen=True)
class ModelSide:
    """One of the two models compared."""

    side: str
    model: str
    adapter: str | None = None

    def tokenizer_source(self) -> str:
        """The adapter's tokenizer when train/ saved one beside it (what training used), else the model's."""
        if self.adapter and (Path(self.adapter) / "tokenizer_config.json").is_file():
            return self.adapter
        return self.model


def recorded_template(*folders: str | None) -> str | None:
    """The template name train/ recorded in sftkit_template.json, first folder first (infer/'s own reader)."""
    try:
        return infer_stage.recorded_template(*folders)
    except infer_stage.UsageError as e:
        raise EvalInputError(str(e)) from None


def read_prompts(path: str, system: str | None = None, limit: int = 0) -> tuple[list[Request], BadLines]:
    """The held-out records as Requests (prompt = the conversation up to its last user turn, reference = the
    assistant answer after it, if any). Bad lines are reported `file:line: reason`; repeated ids are bad too
    (ids key the journals)."""
    if not Path(path).is_file():
        raise EvalInputError(f"--input {path}: no such file")
    bad = BadLines(log)
    stem = Path(path).name.split(".")[0]
    out: list[Request] = []
    seen: set[str] = set()
    for lineno, obj in iter_jsonl(path, bad):
        try:
            req = request_from_obj(obj, system, rid=f"{stem}-{lineno}", source=stem)
        except RecordError as e:
            bad.add(path, lineno, str(e))
            continue
        if req.record["id"] in seen:
            bad.add(path, lineno, f"duplicate id {req.record['id']!r}")
            continue
        seen.add(req.record["id"])
        out.append(req)
        if limit and len(out) >= limit:
            break
    if not out:
        raise EvalInputError(f"--input {path}: no usable records ({bad.count} bad lines)")
    return out, bad


def answer_key(side: ModelSide, engine: tuple[str, str], template: str, sampling: Sampling, req: Request) -> str:
    """`engine`: (backend, dtype)."""
    raw = orjson.dumps([side.side, side.model, side.adapter, *engine, template, asdict(sampling), req.messages])
    return hashlib.sha256(raw).hexdigest()[:20]


@dataclass
class AnswerPlan:
    requests: list[Request]
    sides: list[ModelSide]
    template: str
    sampling: Sampling
    backend: str = "hf"
    dtype: str = "auto"

    def keys(self, side: ModelSide) -> list[str]:
        engine = (self.backend, self.dtype)
        return [answer_key(side, engine, self.template, self.sampling, r) for r in self.requests]

    def pending(self, index: dict[str, dict[str, Any]]) -> dict[str, list[int]]:
        """Side -> indices of the requests without an answer in the journal."""
        return {s.side: [i for i, k in enumerate(self.keys(s)) if k not in index] for s in self.sides}


def journal_index(entries: list[Any]) -> dict[str, dict[str, Any]]:
    return {e["key"]: e for e in entries if isinstance(e, dict) and "key" in e and "response" in e}


def generate_missing(plan: AnswerPlan, journal: Journal, *, trust_remote_code: bool = False, batch_size: int = 8,
                     progress: Callable[[str], None] | None = None) -> dict[str, int]:
    """Generate every missing answer, one model at a time (only one is in memory), journaling each chunk."""
    generated = {}
    for side in plan.sides:
        todo = plan.pending(journal_index(journal.entries))[side.side]
        generated[side.side] = len(todo)
        if not todo:
            continue
        if progress:
            progress(f"{side.side}: {len(todo)} answers from {side.model}"
                     + (f" + {side.adapter}" if side.adapter else ""))
        tokenizer = load_tokenizer(side.tokenizer_source(), trust_remote_code)
        template = get_template(plan.template, tokenizer)
        stops = stop_token_ids(template, tokenizer)
        if not stops:
            raise EvalInputError(f"template {plan.template}: the tokenizer of {side.model} has none of its stop tokens")
        opts = EngineOptions(model=side.model, adapter=side.adapter, dtype=plan.dtype,
                             trust_remote_code=trust_remote_code, seed=plan.sampling.seed)
        engine = open_backend(plan.backend, opts, tokenizer, engine_stop_ids(stops, side.model), batch_size=batch_size)
        keys = plan.keys(side)
        try:
            for start in range(0, len(todo), CHUNK):
                part = todo[start:start + CHUNK]
                ids = [encode_prompt(template, tokenizer, plan.requests[i].messages) for i in part]
                comps = engine.generate(ids, plan.sampling)
                for i, c in zip(part, comps, strict=True):
                    journal.append({"key": keys[i], "side": side.side, "rid": plan.requests[i].record["id"],
                                    "response": c.text, "finish_reason": c.finish_reason,
                                    "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens})
        finally:
            engine.close()
    return generated


def answer_rows(plan: AnswerPlan, index: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any] | None]]:
    """Side -> per request: its journaled answer plus the record's reference (None where not answered)."""
    out: dict[str, list[dict[str, Any] | None]] = {}
    for side in plan.sides:
        rows: list[dict[str, Any] | None] = []
        for req, key in zip(plan.requests, plan.keys(side), strict=True):
            e = index.get(key)
            rows.append(None if e is None else {**e, "reference": req.reference})
        out[side.side] = rows
    return out
