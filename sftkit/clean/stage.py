"""The clean-and-mix stage (prep_sft_firefly_hit.py) as one call: `run(PrepConfig) -> stats`.

The steps, each done by its own module:
1. read: every source's files as blocks, parsed, filtered and hashed in worker processes (`workers`), in order;
2. exact dedup as the blocks arrive, into an on-disk pool, up to each source's cap (`dedup`, `pool`);
3. near dedup over the whole pool, sources in priority order so the first (hit) wins ties (`dedup`);
4. the validation split of the hit source, then the mix at the requested shares (`mixing`);
5. write: the mix, the held-out and domain sets, the dedup report (`pool.write_records`, `dedup`).
The dict it returns is the stats JSON the script writes beside the output, field for field.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sftkit.clean import neardup
from sftkit.clean.dedup import ExactDedup, near_dedup, within_across, write_dedup_report
from sftkit.clean.filters import FilterConfig
from sftkit.clean.mixing import MixPlan, choose, plan_mix, requested_shares
from sftkit.clean.pool import RecordPool, write_records
from sftkit.clean.simhash_index import NearDupResult
from sftkit.clean.workers import BlockWorkers
from sftkit.io.blocks import InputError, detect_kind, iter_blocks
from sftkit.io.jsonl import BadLines
from sftkit.io.trainval import SplitSizes, split_train_val

log = logging.getLogger("prep")  # the name prep's log lines have always carried

HIT = "hit"
FIREFLY = "firefly"


@dataclass
class SourceSpec:
    name: str
    paths: list[str]
    weight: float = 1.0
    cap: int | None = None  # keep at most this many records after filters and exact dedup


@dataclass
class PrepConfig:
    sources: list[SourceSpec]  # in priority order: who wins a duplicate tie
    out: Path
    stats: Path
    total: int | None
    hit_ratio: float | None
    seed: int
    policy: str
    max_repeat: int
    near_dup_threshold: int
    near_method: str
    minhash: neardup.MinHashParams
    dedup_report: Path | None
    dedup: bool
    chatml_text: bool
    workers: int
    block_size: int
    filters: FilterConfig
    val_size: float = 0  # validation records of the hit source: a count when >= 1, a share below 1 (io.trainval)
    val_out: Path | None = None
    domain_out: Path | None = None
    log_level: str = "INFO"
    argv: list[str] = field(default_factory=list)

    @property
    def near(self) -> str | None:
        """The near-dedup method in use, None when there is none."""
        return self.near_method if self.dedup and self.near_dup_threshold >= 0 else None


@dataclass
class SourceStats:
    files: list[str]
    read: int = 0
    bad_lines: int = 0
    passed_filters: int = 0
    exact_dup_within: int = 0
    exact_dup_across: int = 0
    near_dup_within: int = 0
    near_dup_across: int = 0
    usable: int = 0
    cap: int | None = None
    stopped_at_cap: bool = False
    filters: dict[str, Counter[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["filters"] = {k: dict(v) for k, v in self.filters.items()}
        return d


def in_priority_order(sources: dict[str, SourceSpec], extra_order: list[str]) -> list[SourceSpec]:
    """Priority (who wins a duplicate tie): hit, then the other sources in `extra_order`, firefly last."""
    order = ([HIT] if HIT in sources else []) + [n for n in extra_order if n != FIREFLY] + \
        ([FIREFLY] if FIREFLY in sources else [])
    return [sources[n] for n in order]


def check_inputs(sources: list[SourceSpec]) -> None:
    """Raise InputError, before anything is read, for a file that is missing or of no format prep reads."""
    for s in sources:
        for p in s.paths:
            if not os.path.isfile(p):
                raise InputError(f"{s.name}: no such file: {p}")
            detect_kind(p)


def run(cfg: PrepConfig) -> dict[str, Any]:
    """Read, clean, dedup, split, mix and write (see the module docstring); returns the stats."""
    t_start = time.perf_counter()
    names = [s.name for s in cfg.sources]
    with closing(BlockWorkers(cfg.filters, cfg.dedup, cfg.near, cfg.minhash, cfg.workers)) as workers, \
            closing(RecordPool(cfg.out, every_offset=cfg.dedup_report is not None)) as pool:
        stats = {s.name: SourceStats(files=list(s.paths), cap=s.cap) for s in cfg.sources}
        bad = BadLines(log)
        exact = ExactDedup(report=cfg.dedup_report is not None)
        seconds: Counter[str] = Counter()  # worker CPU seconds by step
        t_read = time.perf_counter()
        exact_time = sum(read_source(cfg, i, spec, stats[spec.name], workers, pool, exact, bad, seconds)
                         for i, spec in enumerate(cfg.sources))

        t_near = time.perf_counter()
        arrays = pool.arrays()
        result, candidates = None, 0
        alive = np.ones(len(arrays["offset"]), dtype=bool)
        if cfg.near and len(alive):
            result, candidates = near_dedup(cfg.near, cfg.near_dup_threshold, cfg.minhash, pool, arrays)
            for name, (within, across) in zip(names, within_across(result.dropped, result.cause, arrays["source"],
                                                                  len(names)), strict=True):
                stats[name].near_dup_within += within
                stats[name].near_dup_across += across
            alive = ~result.dropped

        t_mix = time.perf_counter()
        by_source = {name: np.flatnonzero(alive & (arrays["source"] == i)) for i, name in enumerate(names)}
        for name in names:
            stats[name].usable = len(by_source[name])
        rng = np.random.default_rng(cfg.seed)
        held_out = np.zeros(0, dtype=np.int64)
        val_sizes: SplitSizes | None = None
        if cfg.val_size:  # drawn first, so the split does not depend on the mixing flags
            train_rows, val_rows, val_sizes = split_train_val(by_source[HIT].tolist(), cfg.val_size, cfg.seed)
            held_out = np.array(sorted(val_rows), dtype=np.int64)
            by_source[HIT] = np.array(sorted(train_rows), dtype=np.int64)
            if val_sizes.short:
                log.warning("VAL: %s", val_warning(val_sizes))
        plan = mix_plan(cfg, {name: len(v) for name, v in by_source.items()})
        for w in plan.warnings:
            log.warning("MIX: %s", w)
        chosen = choose(by_source, plan.take, rng)

        t_write = time.perf_counter()
        written = write_records(cfg.out, pool, arrays, chosen, cfg.chatml_text)
        outputs: dict[str, Any] = {"path": str(cfg.out), "records": written,
                                   "format": "chatml-text" if cfg.chatml_text else "records"}
        if cfg.val_out is not None:
            outputs["val"] = {"path": str(cfg.val_out), "source": HIT,
                              "records": write_records(cfg.val_out, pool, arrays, held_out, cfg.chatml_text)}
            if val_sizes is not None:
                outputs["val"]["asked"] = val_sizes.asked
                if val_sizes.short:
                    outputs["val"]["warning"] = val_warning(val_sizes)
        if cfg.domain_out is not None:
            outputs["domain"] = {"path": str(cfg.domain_out), "source": HIT, "records": write_records(
                cfg.domain_out, pool, arrays, by_source[HIT], cfg.chatml_text)}
        if cfg.dedup_report is not None:
            outputs["dedup_report"] = {"path": str(cfg.dedup_report), "records": write_dedup_report(
                cfg.dedup_report, pool, arrays, exact.drops, result)}
        t_end = time.perf_counter()
    steps = {"elapsed": time.perf_counter() - t_start, "read": t_near - t_read, "exact": exact_time,
             "near": t_mix - t_near, "mix": t_write - t_mix, "write": t_end - t_write}
    return run_stats(cfg, stats, bad, outputs, result, candidates, plan, steps, seconds, len(arrays["offset"]))


def val_warning(sizes: SplitSizes) -> str:
    """The line said when the validation set is smaller than asked, to keep a record for training."""
    n = sizes.train + sizes.val
    return (f"{n} usable hit record{'s' if n != 1 else ''}: {sizes.val} held out for validation instead of the "
            f"{sizes.asked} asked, so that {sizes.train} stay{'s' if sizes.train == 1 else ''} for training"
            + ("" if n else " (there is nothing to train on)"))


def read_source(cfg: PrepConfig, src_no: int, spec: SourceSpec, st: SourceStats, workers: BlockWorkers,
                pool: RecordPool, exact: ExactDedup, bad: BadLines, seconds: Counter[str]) -> float:
    """Pool one source's files block by block, up to its cap; returns the seconds spent on exact dedup and
    pooling (the main process's share of the reading)."""
    spent = 0.0
    kept_count = 0
    for path in spec.paths:
        if st.stopped_at_cap:
            break
        base = 0  # array elements before this block
        bar = tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc=f"{spec.name}:{Path(path).name}",
                   disable=None, leave=False)
        last_pos = 0
        for res in workers.map(spec.name, iter_blocks(path, cfg.block_size)):
            bar.update(res.raw_pos - last_pos)
            last_pos = res.raw_pos
            st.read += res.read
            for line, ordinal, reason in res.bad:
                st.bad_lines += 1
                where = f"array element {base + ordinal}: " if ordinal is not None else ""
                bad.add(path, line, where + reason)
            for fname, c in res.counts.items():
                st.filters.setdefault(fname, Counter()).update(c)
            seconds.update(res.seconds)
            st.passed_filters += len(res.lens)
            base += res.elements
            t = time.perf_counter()
            keep = np.ones(len(res.lens), dtype=bool)
            if cfg.dedup:
                within, across = exact.mark(res.exact, pool.seq, src_no, keep)
                st.exact_dup_within += within
                st.exact_dup_across += across
            if spec.cap is not None and kept_count + int(keep.sum()) >= spec.cap:
                room = spec.cap - kept_count
                idx = np.flatnonzero(keep)
                keep[idx[room:]] = False
                st.stopped_at_cap = True
            kept_count += int(keep.sum())
            pool.add(res.blob, res.lens, keep, src_no, res.near)
            spent += time.perf_counter() - t
            if st.stopped_at_cap:
                log.info("%s: --max-firefly %d reached; the rest of %s is not read", spec.name, spec.cap, path)
                break
        bar.close()
    return spent


def mix_plan(cfg: PrepConfig, available: dict[str, int]) -> MixPlan:
    """The mix for the usable records: --total and the policy; an explicit --hit-ratio without --total keeps the
    ratio with the most records it allows."""
    shares = requested_shares({s.name: s.weight for s in cfg.sources}, cfg.hit_ratio, HIT)
    total, policy = cfg.total, cfg.policy
    if total is None and cfg.hit_ratio is not None and len(available) > 1:
        total, policy = sum(available.values()), "shrink"
    return plan_mix(available, shares, total, policy, cfg.max_repeat)


def rate(n: int, seconds: float) -> float | None:
    return round(n / seconds, 1) if seconds > 0 else None


def run_stats(cfg: PrepConfig, stats: dict[str, SourceStats], bad: BadLines, outputs: dict[str, Any],
              near: NearDupResult | None, candidates: int, plan: MixPlan, steps: dict[str, float],
              seconds: Counter[str], n_pool: int) -> dict[str, Any]:
    """The stats JSON: outputs, per-source counts, dedup, mix, and timing per step and per worker step."""
    total_read = sum(s.read for s in stats.values())
    # Records entering each worker stage: all read for parsing, each filter's own "seen", the survivors after.
    passed = sum(s.passed_filters for s in stats.values())
    entering = {"parse": total_read, "to_record": total_read, "content_id": passed, "exact_hash": passed,
                "near_signature": passed, "serialize": passed}
    for s in stats.values():
        for fname, c in s.filters.items():
            entering["filter:" + fname] = entering.get("filter:" + fname, 0) + c.get("seen", 0)
    worker_stages = {k: {"cpu_seconds": round(v, 3), "records_in": entering.get(k, 0),
                         "records_per_cpu_s": rate(entering.get(k, 0), v)}
                     for k, v in sorted(seconds.items())}
    method, written, elapsed = cfg.near, outputs["records"], steps["elapsed"]
    return {
        "argv": cfg.argv,
        "output": outputs,
        "sources": {n: s.as_dict() for n, s in stats.items()},
        "bad_lines": bad.as_dict(),
        "dedup": {"enabled": cfg.dedup, "near_method": method,
                  "near_dup_threshold": cfg.near_dup_threshold if method == "simhash" else None,
                  "minhash": asdict(cfg.minhash) if method == "minhash" else None,
                  "near_candidate_pairs": candidates,
                  "near_pairs_confirmed": near.pairs_checked if near is not None else 0,
                  "exact_within": sum(s.exact_dup_within for s in stats.values()),
                  "exact_across": sum(s.exact_dup_across for s in stats.values()),
                  "near_within": sum(s.near_dup_within for s in stats.values()),
                  "near_across": sum(s.near_dup_across for s in stats.values())},
        "mix": plan.as_dict(),
        "timing": {
            "elapsed_s": round(elapsed, 3), "records_read": total_read,
            "records_per_s": rate(total_read, elapsed), "workers": max(1, cfg.workers),
            "stages": {
                "read_parse_filter_hash": {"seconds": round(steps["read"], 3),
                                           "records_per_s": rate(total_read, steps["read"])},
                "exact_dedup_and_pool": {"seconds": round(steps["exact"], 3),
                                         "records_per_s": rate(total_read, steps["exact"])},
                "near_dedup": {"seconds": round(steps["near"], 3), "records_per_s": rate(n_pool, steps["near"])},
                "mix": {"seconds": round(steps["mix"], 3)},
                "write": {"seconds": round(steps["write"], 3), "records_per_s": rate(written, steps["write"])},
            },
            "worker_stages": worker_stages,
        },
    }


def summary(stats: dict[str, Any]) -> str:
    """The few lines prep prints: what was written, a row per source, the mix, the time."""
    lines = [f"prep: wrote {stats['output']['records']} {stats['output']['format']} to {stats['output']['path']}"]
    lines.append(f"{'source':<12}{'read':>10}{'bad':>7}{'filtered':>10}{'exact dup':>11}{'near dup':>10}"
                 f"{'usable':>10}{'taken':>10}")
    for name, s in stats["sources"].items():
        filtered = s["read"] - s["bad_lines"] - s["passed_filters"]
        lines.append(f"{name:<12}{s['read']:>10}{s['bad_lines']:>7}{filtered:>10}"
                     f"{s['exact_dup_within'] + s['exact_dup_across']:>11}"
                     f"{s['near_dup_within'] + s['near_dup_across']:>10}{s['usable']:>10}"
                     f"{stats['mix']['take'].get(name, 0):>10}")
        drops = Counter()
        for fname, c in s["filters"].items():
            for k, v in c.items():
                if k.startswith("drop:"):
                    drops[f"{fname}: {k[5:]}"] += v
        if drops:
            lines.append("    dropped: " + "; ".join(f"{k} {v}" for k, v in drops.most_common(6)))
        if s["stopped_at_cap"]:
            lines.append(f"    stopped reading at the cap of {s['cap']}")
    for extra in ("val", "domain"):
        if extra in stats["output"]:
            e = stats["output"][extra]
            lines.append(f"{extra}: {e['records']} {e['source']} records to {e['path']}")
            if e.get("warning"):
                lines.append("WARNING: " + e["warning"])
    mix = stats["mix"]
    ach = ", ".join(f"{n} {v:.4f} (asked {mix['requested_shares'][n]:.4f})" for n, v in mix["achieved_shares"].items())
    lines.append(f"mix: policy {mix['policy']}, total {mix['total']}; shares: {ach}")
    for w in mix["warnings"]:
        lines.append("WARNING: " + w)
    tm = stats["timing"]
    lines.append(f"time: {tm['elapsed_s']:.1f}s, {tm['records_per_s']} records/s read, {tm['workers']} workers")
    return "\n".join(lines)
