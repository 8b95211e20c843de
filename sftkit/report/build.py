"""The report's data model: plain JSON-able dicts built from the loaded stats and data files.

Every number that comes from a stats file carries where it came from (`from`: file and field), so a reader (and
the tests) can check it against that file. Numbers the stats do not hold (length distributions, per-judge score
histograms, achieved shares counted in the output file) are computed here from the data files.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from sftkit.report.load import Loaded, Records, Stats, file_time

ROLES = ("system", "user", "assistant")
REQUEST_REASONS = ("no_json", "truncated_json")  # counted in rejected_by_reason, but per request, not per item


def _src(s: Stats, *keys: str) -> str:
    return f"{s.path}: {'.'.join(keys)}"


def step(label: str, count: int | None, origin: str, dropped: dict[str, int] | None = None,
         note: str = "") -> dict[str, Any]:
    return {"label": label, "count": count, "from": origin, "dropped": {k: v for k, v in (dropped or {}).items() if v},
            "note": note}


# ---- funnel -----------------------------------------------------------------------------------------------------


def gen_steps(g: Stats, what: str) -> list[dict[str, Any]]:
    """generate: requests planned -> answered -> items returned -> valid items."""
    planned = g.get("requests", "planned")
    done = g.get("requests", "done")
    missing = g.get("requests", "missing")
    failed = g.get("requests", "failed_by_reason", default={}) or {}
    lost = failed if missing and sum(failed.values()) == missing else {"not answered yet (rerun resumes)": missing}
    reasons = g.get("items", "rejected_by_reason", default={}) or {}
    per_request = {k: v for k, v in reasons.items() if k in REQUEST_REASONS}
    per_item = {k: v for k, v in reasons.items() if k not in REQUEST_REASONS}
    return [
        step(f"generation requests planned ({what})", planned, _src(g, "requests", "planned")),
        step("requests answered", done, _src(g, "requests", "done"), lost if missing else {}),
        step("items returned", g.get("items", "seen"), _src(g, "items", "seen"), per_request,
             note="counts items from here on (a topic request asks for several)" if g.get("mode") == "topics"
             else ""),
        step("valid items (generated records)", g.get("items", "valid"), _src(g, "items", "valid"), per_item),
    ]


def filter_drops(src_stats: dict[str, Any]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for fname, c in (src_stats.get("filters") or {}).items():
        for k, v in c.items():
            if k.startswith("drop:"):
                out[f"{fname}: {k[5:]}"] += v
    return dict(out.most_common())


def prep_source_steps(p: Stats, name: str) -> list[dict[str, Any]]:
    s = p.get("sources", name, default={}) or {}
    keys = ("read", "bad_lines", "passed_filters", "exact_dup_within", "exact_dup_across", "near_dup_within",
            "near_dup_across", "usable")
    if any(k not in s for k in keys):
        for k in keys:
            p.get("sources", name, k)  # notes the missing fields
        return []
    base = ("sources", name)
    after_exact = s["passed_filters"] - s["exact_dup_within"] - s["exact_dup_across"]
    capped = after_exact - s["near_dup_within"] - s["near_dup_across"] - s["usable"]
    steps = [
        step(f"{name}: records read (prep)", s["read"], _src(p, *base, "read")),
        step(f"{name}: readable", s["read"] - s["bad_lines"], _src(p, *base, "read - bad_lines"),
             {"unreadable line": s["bad_lines"]}),
        step(f"{name}: passed the filters", s["passed_filters"], _src(p, *base, "passed_filters"), filter_drops(s)),
        step(f"{name}: after exact dedup", after_exact, _src(p, *base, "passed_filters - exact_dup_*"),
             {"exact duplicate (same source)": s["exact_dup_within"],
              "exact duplicate (other source)": s["exact_dup_across"]}),
        step(f"{name}: after near dedup (usable)", s["usable"], _src(p, *base, "usable"),
             {"near duplicate (same source)": s["near_dup_within"],
              "near duplicate (other source)": s["near_dup_across"],
              f"past the cap of {s.get('cap')}": max(capped, 0)}),
    ]
    return steps


def prep_tail_steps(p: Stats, name: str, convert: list[Stats]) -> list[dict[str, Any]]:
    out = p.get("output", default={}) or {}
    usable = p.get("sources", name, "usable")
    steps = []
    val = out.get("val")
    pool = usable
    if isinstance(val, dict) and val.get("source") == name and usable is not None:
        pool = usable - int(val.get("records", 0))
        steps.append(step(f"{name}: training pool after the val split", pool,
                          _src(p, "sources", name, "usable - output.val.records"),
                          {"held out as val": int(val.get("records", 0))}))
    take = p.get("mix", "take", name)
    if take is not None:
        dropped = {"left out by the mix": pool - take} if pool is not None and take < pool else {}
        note = f"{take - pool} repeats (--upsample)" if pool is not None and take > pool else ""
        steps.append(step(f"{name}: taken into the mix", take, _src(p, "mix", "take", name), dropped, note))
    return steps


def convert_steps(convert: list[Stats]) -> list[dict[str, Any]]:
    steps = []
    for c in convert:
        if not c.ok:
            continue
        skipped = c.get("skipped", default={}) or {}
        bad = c.get("bad_lines", "bad_lines", default=0) or 0
        steps.append(step(f"converted to {c.get('format')}: {Path(str(c.get('output'))).name}", c.get("written"),
                          _src(c, "written"), {"unreadable line": bad, **{f"cannot be written: {k}": v
                                                                          for k, v in skipped.items()}}))
    return steps


def slice_steps(sl: Stats) -> list[dict[str, Any]]:
    bad = sl.get("bad_files", "by_reason", default={}) or {}
    return [
        step("documents found", sl.get("files", "seen"), _src(sl, "files", "seen")),
        step("documents sliced", sl.get("files", "sliced"), _src(sl, "files", "sliced"),
             {**{f"unreadable: {k}": v for k, v in bad.items()},
              "no text": sl.get("files", "without_slices", default=0) or 0}),
        step("knowledge slices", sl.get("slices", "count"), _src(sl, "slices", "count"),
             {"below --min-chars": sl.get("dropped", "below_min_chars", "slices", default=0) or 0},
             note="counts slices from here on"),
    ]


def judge_steps(j: Stats) -> list[dict[str, Any]]:
    c = j.get("counts", default={}) or {}
    removed = dict(j.get("removed", default={}) or {})
    need = ("input_records", "with_min_votes", "passed_filter", "after_dedup", "train", "val")
    if any(k not in c for k in need):
        for k in need:
            j.get("counts", k)
        return []
    removed.pop("too_few_votes", None)
    dup = removed.pop("duplicate", None)
    return [
        step("records judged", c["input_records"], _src(j, "counts", "input_records"),
             {"unreadable line": c.get("bad_lines", 0)}),
        step("with enough votes", c["with_min_votes"], _src(j, "counts", "with_min_votes"),
             {"too few valid verdicts": c["input_records"] - c["with_min_votes"]}),
        step("passed the judges", c["passed_filter"], _src(j, "counts", "passed_filter"), removed,
             note="a record can fail for several reasons at once" if sum(removed.values())
             > c["with_min_votes"] - c["passed_filter"] else ""),
        step("after near-duplicate removal", c["after_dedup"], _src(j, "counts", "after_dedup"),
             {"duplicate": dup if dup is not None else c["passed_filter"] - c["after_dedup"]}),
        step("split: train", c["train"], _src(j, "counts", "train")),
        step("split: val", c["val"], _src(j, "counts", "val")),
    ]


def funnels(L: Loaded) -> list[dict[str, Any]]:
    """Two chains: make data (topics -> generate -> prep -> convert) and make distill (documents -> slices ->
    generate -> judge). A chain whose every stage is missing is 'not run'."""
    data_steps: list[dict[str, Any]] = []
    stages: dict[str, str] = {}
    for label, s in (("generate", L.gen), ("prep", L.prep)):
        stages[label] = s.status
    stages["convert"] = "ok" if any(c.ok for c in L.convert) else "not run"
    if L.gen.ok:
        data_steps += gen_steps(L.gen, L.gen.get("mode", default="?"))
    sources = list((L.prep.get("sources", default={}) or {}).keys()) if L.prep.ok else []
    per_source = {}
    if L.prep.ok:
        for name in sources:
            per_source[name] = prep_source_steps(L.prep, name) + prep_tail_steps(L.prep, name, L.convert)
        if "hit" in per_source:
            data_steps += per_source["hit"]
        total = L.prep.get("output", "records")
        data_steps.append(step("mixed output (all sources)", total, _src(L.prep, "output", "records")))
    data_steps += convert_steps(L.convert)
    distill_steps: list[dict[str, Any]] = []
    dstages = {"slice_docs": L.slices.status, "generate": L.distill_gen.status, "judge": L.judge.status}
    if L.slices.ok:
        distill_steps += slice_steps(L.slices)
    if L.distill_gen.ok:
        distill_steps += gen_steps(L.distill_gen, L.distill_gen.get("mode", default="?"))
    if L.judge.ok:
        distill_steps += judge_steps(L.judge)
    elif L.judge_score_run.ok:
        dstages["judge"] = "scored, not filtered (run judge.py --stage filter)"
    notes = []
    gen_valid = L.gen.get("items", "valid", quiet=True)
    hit_read = L.prep.get("sources", "hit", "read", quiet=True)
    if gen_valid is not None and hit_read is not None and gen_valid != hit_read:
        notes.append(f"prep read {hit_read} hit records but generation wrote {gen_valid}: prep was run on other "
                     "files (or on an older generation)")
    return [
        {"name": "make data", "stages": stages, "steps": data_steps, "per_source": per_source, "notes": notes},
        {"name": "make distill", "stages": dstages, "steps": distill_steps, "per_source": {}, "notes": []},
    ]


# ---- lengths ----------------------------------------------------------------------------------------------------


def summary(xs: Sequence[int]) -> dict[str, Any]:
    if not xs:
        return {"n": 0}
    s = sorted(xs)

    def q(p: float) -> int:
        return s[min(len(s) - 1, int(p * (len(s) - 1) + 0.5))]

    return {"n": len(s), "min": s[0], "p10": q(0.1), "p50": q(0.5), "p90": q(0.9), "max": s[-1],
            "mean": round(sum(s) / len(s), 1)}


def role_lengths(recs: list[dict[str, Any]], measure: Callable[[list[str]], list[int]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for role in ROLES:
        texts = [m["content"] for r in recs for m in r["messages"] if m["role"] == role]
        if texts:
            out[role] = measure(texts)
    return out


def chars(texts: list[str]) -> list[int]:
    return [len(t) for t in texts]


def lengths(L: Loaded, tokens: Callable[[list[str]], list[int]] | None) -> list[dict[str, Any]]:
    """Per chain: before (as generated) and after (as kept) lengths per role, in characters and tokens."""
    pairs = [("make data", [("generated", L.files["gen"])], [("after prep (all sources)", L.files["prep"])]),
             ("make distill", [("generated", L.files["distill_gen"])],
              [("kept by the judges (train + val)", _merge(L.files["judge_train"], L.files["judge_val"]))])]
    out = []
    for chain, before, after in pairs:
        sets = []
        for phase, items in (("before", before), ("after", after)):
            for label, recs in items:
                if not recs.exists:
                    continue
                entry: dict[str, Any] = {"phase": phase, "label": label, "path": str(recs.path),
                                         "records": len(recs.records), "truncated": recs.truncated,
                                         "chars": role_lengths(recs.records, chars)}
                if tokens is not None:
                    entry["tokens"] = role_lengths(recs.records, tokens)
                entry["summary"] = {unit: {role: summary(v) for role, v in entry[unit].items()}
                                    for unit in ("chars", "tokens") if unit in entry}
                sets.append(entry)
        out.append({"chain": chain, "sets": sets})
    return out


def _merge(a: Records, b: Records) -> Records:
    m = Records("merged", a.path, exists=a.exists or b.exists)
    m.records = a.records + b.records
    m.truncated = a.truncated or b.truncated
    return m


# ---- judges -----------------------------------------------------------------------------------------------------


def scores(L: Loaded) -> dict[str, Any] | None:
    j = L.judge
    rows = L.files["scored"].rows
    if not j.ok and not rows:
        return None
    dims = [d["name"] for d in (j.get("dimensions", default=[]) or [])]
    weights = {d["name"]: float(d.get("weight", 1.0)) for d in (j.get("dimensions", default=[]) or [])}
    scale = j.get("thresholds", "scale", default=[0, 10]) or [0, 10]
    judges = [x["name"] for x in (j.get("judges", default=[]) or [])]
    for r in rows:  # a judge or dimension the metadata does not list still shows
        for name, v in (r.get("judges") or {}).items():
            if name not in judges:
                judges.append(name)
            for d in (v.get("scores") or {}):
                if d not in dims:
                    dims.append(d)
    per: dict[str, dict[str, list[float]]] = {name: {d: [] for d in dims} for name in judges}
    weighted: dict[str, list[float]] = {name: [] for name in judges}
    status: dict[str, Counter[str]] = {name: Counter() for name in judges}
    by_record: list[dict[str, float]] = []
    for r in rows:
        mine: dict[str, float] = {}
        for name, v in (r.get("judges") or {}).items():
            status[name][v.get("status", "?")] += 1
            if v.get("status") == "vote" and isinstance(v.get("scores"), dict):
                for d, x in v["scores"].items():
                    per[name].setdefault(d, []).append(float(x))
                if v.get("score") is not None:
                    weighted[name].append(float(v["score"]))
                    mine[name] = float(v["score"])
        by_record.append(mine)
    meta_judges = {x["name"]: x for x in (j.get("judges", default=[]) or [])}
    table = []
    for name in judges:
        w = weighted[name]
        table.append({"judge": name, "model": meta_judges.get(name, {}).get("model"),
                      "votes": len(w), "statuses": dict(status[name]),
                      "mean_score": round(sum(w) / len(w), 4) if w else None,
                      "mean_score_in_metadata": meta_judges.get(name, {}).get("mean_score"),
                      "failures_by_reason": meta_judges.get(name, {}).get("failures_by_reason") or {},
                      "dimension_means": {d: round(sum(v) / len(v), 4) if v else None
                                          for d, v in per[name].items()}})
    pairs = []
    for a_i, a in enumerate(judges):
        for b in judges[a_i + 1:]:
            pts = [(r[a], r[b]) for r in by_record if a in r and b in r]
            pairs.append({"judges": [a, b], "points": pts})
    avg = [float(r["avg_score"]) for r in rows if r.get("avg_score") is not None]
    return {"dimensions": dims, "weights": weights, "scale": scale, "judges": judges, "per_dimension": per,
            "weighted": weighted, "table": table, "pairs": pairs, "avg_scores": avg,
            "threshold": j.get("thresholds", "min_score_threshold"),
            "agreement": j.get("agreement", default=[]) or [],
            "score_means": j.get("scores", default={}) or {}, "from": str(j.path)}


# ---- dedup and PII ----------------------------------------------------------------------------------------------


def dedup_pii(L: Loaded) -> dict[str, Any]:
    out: dict[str, Any] = {"generation": [], "prep": None, "judge": None, "pii": {}, "pii_checked": False}
    for label, g in (("make data", L.gen), ("make distill", L.distill_gen)):
        if g.ok:
            reasons = g.get("items", "rejected_by_reason", default={}) or {}
            out["generation"].append({"chain": label, "repeated_items": reasons.get("duplicate", 0),
                                      "from": _src(g, "items", "rejected_by_reason", "duplicate")})
    if L.prep.ok:
        d = L.prep.get("dedup", default={}) or {}
        out["prep"] = {k: d.get(k) for k in ("enabled", "near_method", "near_dup_threshold", "minhash",
                                              "near_candidate_pairs", "near_pairs_confirmed", "exact_within",
                                              "exact_across", "near_within", "near_across")}
        out["prep"]["from"] = _src(L.prep, "dedup")
        for name, s in (L.prep.get("sources", default={}) or {}).items():
            pii = (s.get("filters") or {}).get("pii")
            if pii is None:
                continue
            out["pii_checked"] = True
            kinds: dict[str, dict[str, int]] = {}
            for k, v in pii.items():
                if k.startswith("found:"):
                    kinds.setdefault(k[6:], {"found": 0, "dropped": 0})["found"] += v
                elif k.startswith("drop:contains "):
                    kinds.setdefault(k[14:], {"found": 0, "dropped": 0})["dropped"] += v
            out["pii"][name] = {"kinds": kinds, "records_checked": pii.get("seen", 0),
                                "records_dropped": pii.get("dropped", 0), "records_redacted": pii.get("changed", 0),
                                "from": _src(L.prep, "sources", name, "filters", "pii")}
    if L.judge.ok:
        d = L.judge.get("dedup", default={}) or {}
        dups = [r for r in L.files["scored"].rows if r.get("duplicate_of")]
        out["judge"] = {"method": d.get("encoder", d.get("method")), "threshold": d.get("threshold"),
                        "removed": d.get("removed"), "from": _src(L.judge, "dedup", "removed"),
                        "similarities": [r.get("similarity") for r in dups if r.get("similarity") is not None]}
    return out


# ---- tokens and cost --------------------------------------------------------------------------------------------


def _tok(u: dict[str, Any] | None) -> dict[str, int | None]:
    u = u or {}
    return {k: u.get(k) for k in ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens")}


def costs(L: Loaded) -> list[dict[str, Any]]:
    rows = []
    for label, g in (("generate (make data)", L.gen), ("generate (make distill)", L.distill_gen)):
        if g.ok:
            rows.append({"stage": label, "model": g.get("model"), "requests": g.get("requests", "done"),
                         **_tok(g.get("tokens_total")), "cost_usd": g.get("estimated_cost_usd_total"),
                         "from": _src(g, "tokens_total")})
    judge = L.judge if L.judge.ok else L.judge_score_run
    if judge.ok:
        for x in judge.get("judges", default=[]) or []:
            rows.append({"stage": f"judge {x.get('name')}", "model": x.get("model"),
                         "requests": x.get("votes", x.get("votes_this_run")), **_tok(x.get("tokens_all_runs")),
                         "cost_usd": x.get("cost_usd_all_runs"), "from": _src(judge, "judges", "tokens_all_runs")})
        d = L.judge.get("dedup", default={}, quiet=True) or {}
        if d.get("tokens") is not None:
            rows.append({"stage": "judge dedup embeddings", "model": d.get("model"), "requests": d.get("requests"),
                         "prompt_tokens": d.get("tokens"), "cached_tokens": None, "completion_tokens": None,
                         "reasoning_tokens": None, "cost_usd": None, "from": _src(L.judge, "dedup", "tokens")})
    return rows


# ---- mix --------------------------------------------------------------------------------------------------------


def mix(L: Loaded) -> dict[str, Any] | None:
    if not L.prep.ok:
        return None
    p = L.prep
    take = p.get("mix", "take", default={}) or {}
    fields = {k: p.get("mix", k, default={}) or {} for k in ("requested_shares", "achieved_shares", "available")}
    counted = Counter(r.get("source") for r in L.files["prep"].records)
    n = sum(counted.values())
    return {"policy": p.get("mix", "policy"), "total": p.get("mix", "total"),
            "requested_total": p.get("mix", "requested_total"), "warnings": p.get("mix", "warnings", default=[]),
            "rows": [{"source": s, "requested_share": fields["requested_shares"].get(s),
                      "achieved_share": fields["achieved_shares"].get(s), "available": fields["available"].get(s),
                      "take": take.get(s), "counted_in_output": counted.get(s, 0),
                      "counted_share": round(counted.get(s, 0) / n, 6) if n else None} for s in take],
            "counted_from": str(L.files["prep"].path), "counted_truncated": L.files["prep"].truncated,
            "from": _src(p, "mix")}


# ---- samples ----------------------------------------------------------------------------------------------------


def samples(L: Loaded, k: int, seed: int) -> list[dict[str, Any]]:
    """k records per stage, a seeded draw (the same files give the same samples)."""
    def pick(rows: list[Any]) -> list[Any]:
        if len(rows) <= k:
            return list(rows)
        idx = sorted(random.Random(seed).sample(range(len(rows)), k))
        return [rows[i] for i in idx]

    out = []

    def add(stage: str, recs: Records, rows: list[dict[str, Any]], kind: str = "record") -> None:
        if recs.exists:
            out.append({"stage": stage, "path": str(recs.path), "kind": kind, "items": pick(rows)})

    f = L.files
    add("generated (make data)", f["gen"], [_rec(r) for r in f["gen"].records])
    add("generation rejects (make data)", f["gen_rejects"], [_reject(r) for r in f["gen_rejects"].rows], "reject")
    add("after prep", f["prep"], [_rec(r) for r in f["prep"].records])
    if "prep_val" in f:
        add("prep val set", f["prep_val"], [_rec(r) for r in f["prep_val"].records])
    for key, recs in f.items():
        if key.startswith("convert:"):
            add(recs.label, recs, [_rec(r) for r in recs.records])
    add("generated (make distill)", f["distill_gen"], [_rec(r) for r in f["distill_gen"].records])
    add("generation rejects (make distill)", f["distill_rejects"], [_reject(r) for r in f["distill_rejects"].rows],
        "reject")
    scored = list(zip(f["scored"].records, f["scored"].rows, strict=True))
    add("passed the judges", f["scored"], [_rec(r, _verdicts(row)) for r, row in scored
                                           if row.get("passed_filter") and not row.get("duplicate_of")])
    add("failed the judges", f["scored"], [_rec(r, _verdicts(row)) for r, row in scored
                                           if not row.get("passed_filter")])
    add("removed as near-duplicates by judge.py", f["scored"], [
        _rec(r, {"duplicate of": row["duplicate_of"], "similarity": row.get("similarity")}) for r, row in scored
        if row.get("duplicate_of")])
    return out


def _rec(r: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": r.get("id"), "source": r.get("source"), "messages": r["messages"], "extra": extra or {}}


def _reject(r: dict[str, Any]) -> dict[str, Any]:
    raw = r.get("raw")
    return {"id": f"{r.get('unit')} item {r.get('item', '-')}", "reason": r.get("reason"),
            "raw": raw if isinstance(raw, str) else orjson.dumps(raw).decode()}


def _verdicts(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"avg score": row.get("avg_score"), "fail reasons": ", ".join(row.get("fail_reasons") or [])
                           or "none"}
    for name, v in (row.get("judges") or {}).items():
        out[f"judge {name}"] = v.get("score") if v.get("status") == "vote" else v.get("status")
    return out


# ---- all --------------------------------------------------------------------------------------------------------


def build(L: Loaded, tokens: Callable[[list[str]], list[int]] | None = None, k_samples: int = 3,
          seed: int = 0, tokenizer: str | None = None) -> dict[str, Any]:
    inputs = []
    for s in L.all_stats():
        inputs.append({"stage": s.label, "path": str(s.path), "status": s.status, "written": s.mtime()})
    for rec in L.files.values():
        inputs.append({"stage": rec.label, "path": str(rec.path), "status": "ok" if rec.exists else "not run",
                       "written": file_time(rec.path) if rec.exists else None,
                       "records": rec.total_lines if rec.exists else None,
                       "read": rec.read_count if rec.exists else None})
    guard_notes: list[str] = []

    def guarded(name: str, fn: Callable[[], Any], default: Any) -> Any:
        """A stats file of an unexpected shape (a list where a dict was, a string for a count) costs its
        section, with a note, never the whole report."""
        try:
            return fn()
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            guard_notes.append(f"the {name} section could not be built from these files ({type(e).__name__}: {e}); "
                               "is a stats file from another version or edited by hand?")
            return default

    model = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tokenizer": tokenizer,
        "inputs": inputs,
        "funnels": guarded("funnel", lambda: funnels(L), []),
        "lengths": guarded("lengths", lambda: lengths(L, tokens), []),
        "scores": guarded("judges", lambda: scores(L), None),
        "dedup_pii": guarded("dedup and PII", lambda: dedup_pii(L), {"generation": [], "prep": None, "judge": None,
                                                                    "pii": {}, "pii_checked": False}),
        "costs": guarded("tokens and cost", lambda: costs(L), []),
        "mix": guarded("mix", lambda: mix(L), None),
        "samples": guarded("samples", lambda: samples(L, k_samples, seed), []),
        "not_expressible": guarded("conversion", lambda: [
            {"file": str(c.get("output")), "format": c.get("format"),
             "items": c.get("not_expressible", default={}) or {}} for c in L.convert if c.ok], []),
        "slices": guarded("slices", lambda: {"coverage": L.slices.get("chars", "coverage"), "cut_inside_sentence":
                                             L.slices.get("slices", "cut_inside_sentence")} if L.slices.ok else None,
                          None),
    }
    truncated = [r.label for r in L.files.values() if r.truncated]
    model["notes"] = L.notes() + guard_notes + [n for f in model["funnels"] for n in f["notes"]] + (
        [f"only the first records of {', '.join(truncated)} were read (--max-records)"] if truncated else [])
    return model
