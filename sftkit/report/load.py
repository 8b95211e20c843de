"""Finding and reading what the stages left behind: their stats JSON files and their data files.

A stage that was not run has no files: it is "not run", never an error. A stats file from an older version may
lack fields; every missing field asked for is collected as one note (the report shows them), and the figure or
count that needed it says "—" instead of a number.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from sftkit.io.convert import from_row
from sftkit.io.jsonl import BadLines, iter_jsonl
from sftkit.io.records import RecordError

MISSING = object()


def stats_path_for(data_path: str | os.PathLike[str]) -> Path:
    """The stats JSON the stages write beside their output: OUT with .stats.json instead of .jsonl."""
    p = Path(data_path)
    name = p.name[:-6] if p.name.endswith(".jsonl") else p.name
    return p.with_name(name + ".stats.json")


@dataclass
class Stats:
    """One stats JSON file. `get("a", "b")` walks keys; a key that is not there is noted once and gives None."""

    label: str
    path: Path
    data: dict[str, Any] | None = None
    status: str = "not run"  # "ok", "not run" (no file), "unreadable"
    error: str = ""
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, label: str, path: str | os.PathLike[str]) -> Stats:
        s = cls(label, Path(path))
        if not s.path.is_file():
            return s
        try:
            obj = orjson.loads(s.path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as e:
            s.status, s.error = "unreadable", f"{s.path}: cannot be read as JSON ({e})"
            return s
        if not isinstance(obj, dict):
            s.status, s.error = "unreadable", f"{s.path}: not a JSON object"
            return s
        s.data, s.status = obj, "ok"
        return s

    @property
    def ok(self) -> bool:
        return self.data is not None

    def get(self, *keys: str, default: Any = None, quiet: bool = False) -> Any:
        cur: Any = self.data
        if cur is None:
            return default
        for i, k in enumerate(keys):
            if not isinstance(cur, dict) or k not in cur:
                if not quiet:
                    note = (f"{self.path}: no field {'.'.join(keys[:i + 1])} (written by an older version of the "
                            f"stage?); the report leaves it out")
                    if note not in self.notes:
                        self.notes.append(note)
                return default
            cur = cur[k]
        return cur

    def mtime(self) -> str | None:
        return file_time(self.path)


def file_time(path: Path) -> str | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
    except OSError:
        return None


@dataclass
class Records:
    """Canonical records read from one data file (any SPEC form), at most `limit` of them."""

    label: str
    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)  # raw rows, kept with keep_rows (scored.jsonl's
    # judge fields) or when not canonical (rejects); a big record file is held once, as records
    read_count: int = 0
    exists: bool = False
    total_lines: int = 0  # readable lines in the file (all of them, also those past the limit)
    truncated: bool = False
    bad: int = 0

    @classmethod
    def read(cls, label: str, path: str | os.PathLike[str], limit: int = 0, canonical: bool = True,
             keep_rows: bool = False) -> Records:
        r = cls(label, Path(path))
        if not r.path.is_file():
            return r
        r.exists = True
        bad = BadLines(_QuietLog())
        source = r.path.name.split(".")[0]
        for lineno, obj in iter_jsonl(r.path, bad):
            r.total_lines += 1
            if limit and r.read_count >= limit:
                r.truncated = True
                continue
            if not isinstance(obj, dict):
                bad.add(r.path, lineno, "not a JSON object")
                continue
            if canonical:
                try:
                    rec = from_row(obj, source=source, rid=f"{source}-{lineno}")
                except (RecordError, TypeError, AttributeError, ValueError):
                    bad.add(r.path, lineno, "not a record")
                    continue
                r.records.append(rec)
            if keep_rows or not canonical:
                r.rows.append(obj)
            r.read_count += 1
        r.bad = bad.count
        return r


class _QuietLog:
    """A logger stand-in: the report counts unreadable lines (their stage already reported each one)."""

    def warning(self, *args: Any) -> None:
        pass


@dataclass
class Inputs:
    """Where every stage's files are (defaults: the Makefile's output paths)."""

    slices: Path = Path("data/slices/slices.jsonl")
    gen: Path = Path("data/raw/hit/generated.jsonl")
    prep: Path = Path("data/processed/train_mixed.jsonl")
    convert: list[Path] = field(default_factory=lambda: [Path("data/processed/train_firefly.jsonl"),
                                                         Path("data/processed/train_domain_firefly.jsonl"),
                                                         Path("data/processed/val_firefly.jsonl")])
    distill: Path = Path("data/distilled")
    prep_stats: Path | None = None  # default: beside --prep


@dataclass
class Loaded:
    """Every stats file, plus the data files the report reads records from (at most `limit` each)."""

    inputs: Inputs
    slices: Stats
    gen: Stats
    prep: Stats
    convert: list[Stats]
    distill_gen: Stats
    judge: Stats
    judge_score_run: Stats
    files: dict[str, Records]

    def all_stats(self) -> list[Stats]:
        return [self.slices, self.gen, self.prep, *self.convert, self.distill_gen, self.judge, self.judge_score_run]

    def notes(self) -> list[str]:
        out: list[str] = []
        for s in self.all_stats():
            if s.error:
                out.append(s.error)
            out += s.notes
        return out


def load(inputs: Inputs, limit: int = 0) -> Loaded:
    d = inputs.distill
    prep_stats = Stats.load("prep", inputs.prep_stats or stats_path_for(inputs.prep))
    files: dict[str, Records] = {
        "gen": Records.read("generated (make data)", inputs.gen, limit),
        "gen_rejects": Records.read("generation rejects (make data)", stats_path_for(inputs.gen).with_name(
            inputs.gen.name.removesuffix(".jsonl") + ".rejects.jsonl"), limit, canonical=False),
        "prep": Records.read("cleaned and mixed (prep)", inputs.prep, limit),
        "distill_gen": Records.read("generated (make distill)", d / "generated.jsonl", limit),
        "distill_rejects": Records.read("generation rejects (make distill)", d / "generated.rejects.jsonl", limit,
                                        canonical=False),
        "scored": Records.read("judged (scored.jsonl)", d / "scored.jsonl", limit, keep_rows=True),
        "judge_train": Records.read("judged train split", d / "train.jsonl", limit),
        "judge_val": Records.read("judged val split", d / "val.jsonl", limit),
    }
    # prep's held-out and domain-only outputs are where its stats say they went
    out = prep_stats.get("output", quiet=True) or {}
    for key in ("val", "domain"):
        if isinstance(out.get(key), dict) and out[key].get("path"):
            files["prep_" + key] = Records.read(f"prep {key} set", Path(out[key]["path"]), limit)
    for p in inputs.convert:
        files["convert:" + str(p)] = Records.read(f"converted {p.name}", p, limit)
    return Loaded(
        inputs=inputs,
        slices=Stats.load("slice_docs", stats_path_for(inputs.slices)),
        gen=Stats.load("generate (make data)", stats_path_for(inputs.gen)),
        prep=prep_stats,
        convert=[Stats.load(f"convert {p.name}", stats_path_for(p)) for p in inputs.convert],
        distill_gen=Stats.load("generate (make distill)", d / "generated.stats.json"),
        judge=Stats.load("judge", d / "metadata.json"),
        judge_score_run=Stats.load("judge --stage score", d / "score_run.json"),
        files=files,
    )


def token_counter(tokenizer: str) -> Callable[[list[str]], list[int]]:
    """Batch token counter from a tokenizer.json file or a Hugging Face tokenizer folder (no special tokens)."""
    if Path(tokenizer).is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(tokenizer)
    else:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=False)
        tok = getattr(hf, "backend_tokenizer", None)
        if tok is None:  # a slow tokenizer only
            return lambda texts: [len(hf.encode(t, add_special_tokens=False)) for t in texts]
    return lambda texts: [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]
