"""The data model -> one self-contained HTML page: inline CSS, figures as data: PNG, no script, no external URL.
Every piece of data shown (records, reasons, paths, names) goes through html.escape."""

from __future__ import annotations

from html import escape
from typing import Any

from sftkit.report import plots

CAPTIONS = {
    "funnel": "Records left after each step of the chain, with what each step removed in the table below; healthy: "
              "every step keeps most of what it receives, and no one reason removes more than a few percent unless "
              "a setting asked for it (a strict threshold, a small --total).",
    "lengths": "Message lengths per role before (filled) and after (outline) cleaning, each scaled to the same area; "
               "healthy: the after curve lies inside the length bounds and keeps the shape of the before curve, "
               "without piling up at a bound or losing one side of it.",
    "judge_scores": "How often each judge gave each score on each dimension; healthy: scores spread over the upper "
                    "half of the scale and vary between records, since a judge that gives everything the same score "
                    "tells good from bad apart no better than chance.",
    "avg_scores": "The records' final weighted scores with the pass threshold (dashed); healthy: most records above "
                  "the line and a visible tail below it that the filter removes.",
    "agreement": "Each point is one record scored by both judges (weighted score); healthy: points close to the "
                 "diagonal, Spearman above about 0.5 and Cohen's kappa above about 0.4.",
    "pii": "Pieces of personal data found per kind, and records dropped for them, per source; healthy: zero or "
           "close to it for generated data, where any hit deserves a look at the records.",
    "dedup": "Records removed as exact and near duplicates at each stage; healthy: a few percent, while much more "
             "means the generator repeats itself (vary the prompts or raise the temperature).",
    "costs": "Tokens per stage over all runs (prompt and completion); healthy: completion tokens in line with the "
             "items asked for, and judge prompt tokens about records x judges x prompt size, with no stage "
             "costing far more than the others for what it delivers.",
    "mix": "Share of each source asked for against what the mixed output holds; healthy: the bars match to within "
           "a record, and a gap means a source ran short and the mix policy decided (see the warnings).",
}

CSS = """
body{font-family:"DejaVu Sans","WenQuanYi Micro Hei","Noto Sans CJK SC",sans-serif;margin:24px auto;max-width:1180px;
color:#222;font-size:14px;line-height:1.4}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin-bottom:6px}
table{border-collapse:collapse;margin:6px 0 12px 0;font-size:12.5px}
td,th{border:1px solid #ddd;padding:3px 7px;vertical-align:top;text-align:left}th{background:#f3f3f3}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.what{color:#555;font-style:italic;margin:2px 0 8px 0;max-width:900px}
.note{background:#fff8e1;border-left:4px solid #f0b429;padding:6px 10px;margin:6px 0}
.notrun{color:#888}.src{color:#999;font-size:11px}
.rec{border:1px solid #ddd;border-radius:4px;padding:6px 10px;margin:6px 0;background:#fafafa}
.msg{white-space:pre-wrap;margin:2px 0}.role{font-weight:bold;color:#555}
nav a{margin-right:12px}img{max-width:100%}
"""


def _n(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:,.4f}".rstrip("0").rstrip(".")
    if isinstance(x, int):
        return f"{x:,}"
    return escape(str(x))


def _table(head: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    out = ["<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f'<td class="n">{_n(v)}</td>' if i in numeric else f"<td>{_cell(v)}</td>"
                                    for i, v in enumerate(r)) + "</tr>")
    return "".join(out) + "</table>"


def _cell(v: Any) -> str:
    if isinstance(v, dict):
        return "<br>".join(f"{escape(str(k))}: {_n(x)}" for k, x in v.items()) or "—"
    if isinstance(v, Raw):
        return v.html
    return _n(v)


class Raw:
    """Already-escaped HTML for a table cell."""

    def __init__(self, html: str) -> None:
        self.html = html


def _figure(png: str | None, kind: str, alt: str) -> str:
    if png is None:
        return ""
    return (f'<figure><img alt="{escape(alt)}" src="data:image/png;base64,{png}">'
            f'<figcaption class="what">{escape(CAPTIONS[kind])}</figcaption></figure>')


def render(model: dict[str, Any], with_figures: bool = True) -> str:
    why = plots.available() if with_figures else "figures turned off"
    figs = with_figures and not why
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>SFT data report</title>"
             f"<style>{CSS}</style></head><body><h1>SFT data report</h1>",
             f"<p>Built {escape(model['created_at'])}"
             + (f"; tokens counted with {escape(model['tokenizer'])}" if model.get("tokenizer") else
                "; lengths in characters (give --tokenizer for tokens too)") + ".</p>",
             '<nav><a href="#funnel">funnel</a><a href="#lengths">lengths</a><a href="#judges">judges</a>'
             '<a href="#dedup">dedup and PII</a><a href="#costs">tokens and cost</a><a href="#mix">mix</a>'
             '<a href="#samples">samples</a><a href="#inputs">inputs</a></nav>']
    for note in model["notes"] + ([why] if why and with_figures else []):
        parts.append(f'<div class="note">{escape(note)}</div>')
    parts.append(funnel_section(model, figs))
    parts.append(lengths_section(model, figs))
    parts.append(judges_section(model, figs))
    parts.append(dedup_section(model, figs))
    parts.append(costs_section(model, figs))
    parts.append(mix_section(model, figs))
    parts.append(samples_section(model))
    parts.append(inputs_section(model))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def inputs_section(model: dict[str, Any]) -> str:
    rows = [[i["stage"], Raw(f'<span class="src">{escape(i["path"])}</span>'),
             Raw(f'<span class="{"notrun" if i["status"] != "ok" else ""}">{escape(i["status"])}</span>'),
             i.get("written"), i.get("records")] for i in model["inputs"]]
    return ('<h2 id="inputs">Inputs</h2><p class="what">The stats and data files this report was built from; a '
            'stage that has not been run is listed as "not run".</p>'
            + _table(["stage", "file", "status", "written (UTC)", "lines"], rows, {4}))


def funnel_section(model: dict[str, Any], figs: bool) -> str:
    out = ['<h2 id="funnel">Funnel: what each stage kept and removed</h2>']
    for f in model["funnels"]:
        stages = ", ".join(f"{k}: {v}" for k, v in f["stages"].items())
        out.append(f"<h3>{escape(f['name'])}</h3><p class=\"src\">stages: {escape(stages)}</p>")
        if not f["steps"]:
            out.append('<p class="notrun">not run (no stats file of this chain was found)</p>')
            continue
        for n in f["notes"]:
            out.append(f'<div class="note">{escape(n)}</div>')
        if figs:
            out.append(_figure(plots.funnel(f["steps"], f["name"]), "funnel", f"funnel of {f['name']}"))
        rows = [[s["label"], s["count"], s["dropped"] or "", Raw((escape(s["note"]) + "<br>" if s["note"] else "")
                                                                 + f'<span class="src">{escape(s["from"])}</span>')]
                for s in f["steps"]]
        out.append(_table(["step", "records", "removed here, by reason", "note / from"], rows, {1}))
        for name, steps in f["per_source"].items():
            if name == "hit" or not steps:
                continue
            out.append(f"<p>prep, source <b>{escape(name)}</b>:</p>")
            out.append(_table(["step", "records", "removed here, by reason"],
                              [[s["label"], s["count"], s["dropped"] or ""] for s in steps], {1}))
    ne = [x for x in model["not_expressible"] if x["items"]]
    if ne:
        out.append("<p>What the conversion formats could not carry (counted, not dropped silently):</p>")
        out.append(_table(["file", "format", "not expressible"], [[x["file"], x["format"], x["items"]] for x in ne]))
    if model.get("slices"):
        s = model["slices"]
        out.append(f"<p>slice_docs.py: coverage of the extracted text {_n(s['coverage'])}, "
                   f"{_n(s['cut_inside_sentence'])} slices cut inside a sentence.</p>")
    return "\n".join(out)


def lengths_section(model: dict[str, Any], figs: bool) -> str:
    out = ['<h2 id="lengths">Lengths per role, before and after</h2>']
    for chain in model["lengths"]:
        out.append(f"<h3>{escape(chain['chain'])}</h3>")
        if not chain["sets"]:
            out.append('<p class="notrun">not run</p>')
            continue
        for unit in ("chars", "tokens"):
            if not any(unit in s for s in chain["sets"]):
                continue
            if figs:
                out.append(_figure(plots.lengths(chain["sets"], unit, f"{chain['chain']}: {unit}"), "lengths",
                                   f"lengths in {unit}"))
            rows = []
            for s in chain["sets"]:
                for role, sm in s["summary"].get(unit, {}).items():
                    rows.append([f"{s['phase']}: {s['label']}", role, sm.get("n"), sm.get("min"), sm.get("p10"),
                                 sm.get("p50"), sm.get("p90"), sm.get("max"), sm.get("mean")])
            out.append(_table(["set", f"role ({unit})", "messages", "min", "p10", "median", "p90", "max", "mean"],
                              rows, {2, 3, 4, 5, 6, 7, 8}))
    return "\n".join(out)


def judges_section(model: dict[str, Any], figs: bool) -> str:
    sc = model["scores"]
    out = ['<h2 id="judges">Judges: scores and agreement</h2>']
    if sc is None:
        return out[0] + '<p class="notrun">not run (no judge.py metadata.json)</p>'
    rows = [[t["judge"], t["model"], t["votes"], t["statuses"], t["mean_score"], t["failures_by_reason"] or "",
             t["dimension_means"]] for t in sc["table"]]
    out.append(_table(["judge", "model", "votes", "verdicts by status", "mean weighted score", "failures",
                       "mean per dimension"], rows, {2, 4}))
    if figs:
        out.append(_figure(plots.judge_scores(sc), "judge_scores", "score histograms"))
        out.append(_figure(plots.avg_scores(sc), "avg_scores", "final scores"))
    if sc["agreement"]:
        out.append(_table(["judges", "records both voted on", "Spearman", "Cohen's kappa", "pass agreement"],
                          [[" vs ".join(a.get("judges", [])), a.get("n"), a.get("spearman"), a.get("cohen_kappa"),
                            a.get("pass_agreement")] for a in sc["agreement"]], {1, 2, 3, 4}))
        if figs:
            out.append(_figure(plots.agreement(sc), "agreement", "judge agreement"))
    elif len(sc["judges"]) < 2:
        out.append("<p>One judge only: no agreement to show.</p>")
    return "\n".join(out)


def dedup_section(model: dict[str, Any], figs: bool) -> str:
    d = model["dedup_pii"]
    out = ['<h2 id="dedup">Near-duplicates and personal data</h2>']
    groups: dict[str, dict[str, float]] = {}
    for g in d["generation"]:
        groups[f"generate ({g['chain']})"] = {"exact": g["repeated_items"]}
    rows = [[f"generate ({g['chain']})", "items repeated verbatim", g["repeated_items"], "", ""]
            for g in d["generation"]]
    if d["prep"]:
        p = d["prep"]
        method = p.get("near_method") or "off"
        rows.append(["prep", f"exact; near: {method}", (p.get("exact_within") or 0) + (p.get("exact_across") or 0),
                     (p.get("near_within") or 0) + (p.get("near_across") or 0),
                     {"exact within a source": p.get("exact_within"), "exact across sources": p.get("exact_across"),
                      "near within a source": p.get("near_within"), "near across sources": p.get("near_across"),
                      "candidate pairs": p.get("near_candidate_pairs"), "confirmed": p.get("near_pairs_confirmed")}])
        groups["prep"] = {"exact": (p.get("exact_within") or 0) + (p.get("exact_across") or 0),
                          "near": (p.get("near_within") or 0) + (p.get("near_across") or 0)}
    if d["judge"]:
        j = d["judge"]
        rows.append(["judge", f"near: {j['method']}", "", j["removed"], {"threshold": j["threshold"]}])
        groups["judge"] = {"near": j["removed"] or 0}
    if not rows:
        out.append('<p class="notrun">not run</p>')
    else:
        out.append(_table(["stage", "method", "exact removed", "near removed", "detail"], rows, {2, 3}))
        if figs:
            out.append(_figure(plots.bars(groups, "duplicates removed", "records"), "dedup", "duplicates"))
    out.append("<h3>Personal data (prep)</h3>")
    if not d["pii_checked"]:
        out.append('<p class="notrun">not checked (prep not run, or run without --drop-pii / --redact-pii)</p>')
        return "\n".join(out)
    prow, pgroups = [], {}
    for src, v in d["pii"].items():
        for kind, c in sorted(v["kinds"].items()):
            prow.append([src, kind, c["found"], c["dropped"]])
            pgroups[f"{src}: {kind}"] = {"found": c["found"], "records dropped": c["dropped"]}
        prow.append([src, "(records)", f"{v['records_checked']:,} checked", v["records_dropped"]])
    out.append(_table(["source", "kind", "pieces found", "records dropped"], prow, {2, 3}))
    if figs and pgroups:
        out.append(_figure(plots.bars(pgroups, "personal data", "count"), "pii", "personal data"))
    elif not pgroups:
        out.append("<p>No personal data found.</p>")
    return "\n".join(out)


def costs_section(model: dict[str, Any], figs: bool) -> str:
    out = ['<h2 id="costs">Tokens and cost per stage</h2>']
    rows = model["costs"]
    if not rows:
        return out[0] + '<p class="notrun">no LLM stage run</p>'
    total = [r["cost_usd"] for r in rows]
    table = [[r["stage"], r["model"], r["requests"], r["prompt_tokens"], r["cached_tokens"], r["completion_tokens"],
              r["reasoning_tokens"], r["cost_usd"] if r["cost_usd"] is not None else "price unknown"] for r in rows]
    table.append(["total", "", None, sum(r["prompt_tokens"] or 0 for r in rows), None,
                  sum(r["completion_tokens"] or 0 for r in rows), None,
                  round(sum(total), 6) if all(x is not None for x in total) else "not every price known"])
    out.append(_table(["stage", "model", "requests / votes", "prompt tokens", "cached", "completion tokens",
                       "reasoning", "cost (USD, estimate)"], table, {2, 3, 4, 5, 6, 7}))
    if figs:
        groups = {r["stage"]: {"prompt": r["prompt_tokens"] or 0, "completion": r["completion_tokens"] or 0}
                  for r in rows}
        out.append(_figure(plots.bars(groups, "tokens per stage (all runs)", "tokens"), "costs", "tokens"))
    return "\n".join(out)


def mix_section(model: dict[str, Any], figs: bool) -> str:
    m = model["mix"]
    out = ['<h2 id="mix">Mix: shares asked for and achieved</h2>']
    if m is None:
        return out[0] + '<p class="notrun">not run (no prep stats)</p>'
    out.append(f"<p>policy {escape(str(m['policy']))}, total {_n(m['total'])} (asked "
               f"{_n(m['requested_total'])}).</p>")
    for w in m["warnings"]:
        out.append(f'<div class="note">{escape(w)}</div>')
    out.append(_table(["source", "asked share", "achieved share", "available", "taken", "counted in the output",
                       "counted share"], [[r["source"], r["requested_share"], r["achieved_share"], r["available"],
                                           r["take"], r["counted_in_output"], r["counted_share"]]
                                          for r in m["rows"]], {1, 2, 3, 4, 5, 6}))
    if figs:
        groups = {r["source"]: {"asked": r["requested_share"] or 0, "achieved": r["achieved_share"] or 0}
                  for r in m["rows"]}
        out.append(_figure(plots.bars(groups, "share of the mixed output", "share"), "mix", "mix shares"))
    return "\n".join(out)


def samples_section(model: dict[str, Any]) -> str:
    out = ['<h2 id="samples">Sample records per stage</h2><p class="what">A seeded draw of a few records from each '
           'file, shown exactly as stored (long turns cut at 600 characters).</p>']
    for s in model["samples"]:
        out.append(f"<h3>{escape(s['stage'])} <span class=\"src\">{escape(s['path'])}</span></h3>")
        if not s["items"]:
            out.append("<p>(none)</p>")
        for it in s["items"]:
            out.append(_sample(it, s["kind"]))
    return "\n".join(out)


def _cut(text: str, n: int = 600) -> str:
    return escape(text if len(text) <= n else text[:n] + f" … [{len(text) - n} more characters]")


def _sample(it: dict[str, Any], kind: str) -> str:
    if kind == "reject":
        return (f'<div class="rec"><div class="src">{escape(str(it["id"]))} — rejected: '
                f'{escape(str(it["reason"]))}</div><div class="msg">{_cut(it["raw"])}</div></div>')
    extra = "; ".join(f"{k}: {v}" for k, v in it["extra"].items())
    msgs = "".join(f'<div class="msg"><span class="role">{escape(m["role"])}:</span> {_cut(m["content"])}</div>'
                   for m in it["messages"])
    return (f'<div class="rec"><div class="src">{escape(str(it["id"]))} ({escape(str(it["source"]))})'
            f'{" — " + escape(extra) if extra else ""}</div>{msgs}</div>')
