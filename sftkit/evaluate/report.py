"""eval_report.json and eval_report.md: the win rate as the field counts it (a tie is half a win) overall, per judge,
category and source, with intervals; the length-controlled win rate; position bias per judge; agreement with people;
contamination; judge agreement; judge-free figures per model; the worst losses quoted. Whether the run is complete
comes first: a partial result never looks whole.

A figure that cannot be computed is null in the JSON with its reason under the row's `na`; the Markdown prints
`n/a (reason)`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sftkit.evaluate import human, stats
from sftkit.evaluate.length_control import Verdict, length_controlled
from sftkit.evaluate.pairwise import PairItem, Votes

WORST_QUOTED = 5
QUOTE_CHARS = 600
LC_KEYS = ("lc_win_rate", "lc_win_rate_ci95", "length_coef", "length_coef_ci95")
ANCHORS = {
    "length": "AlpacaEval 2's length-controlled win rate raised its Spearman correlation with Chatbot Arena from "
              "0.94 to 0.98 and cut the effect of prompted verbosity from 25% to 10% (Dubois et al. 2024)",
    "position": "MT-Bench (Zheng et al. 2023): GPT-4 kept its verdict after an order swap 65% of the time (flip "
                "rate 35%), Claude-v1 favoured the first answer 75% of the time; a 2026 study of 27 judges: the "
                "median judge flips 44.8% of decisive pairs",
    "human": "MT-Bench: GPT-4 vs humans 66% with ties / 85% without; human vs human 63% / 81%",
}


def category_of(record: Mapping[str, Any]) -> str:
    meta = record.get("meta") or {}
    return str(meta.get("category") or "(none)")


def grouped(outcomes: Sequence[str | None], keys: Sequence[str]) -> dict[str, Any]:
    groups: dict[str, list[str]] = {}
    for o, k in zip(outcomes, keys, strict=True):
        if o is not None:
            groups.setdefault(k, []).append(o)
    return {k: stats.win_tie_loss(v) for k, v in sorted(groups.items())}


def lc_verdicts(items: Sequence[PairItem], votes: Votes, judge: str | None) -> list[Verdict]:
    """Every usable verdict of `judge` (None: of every judge) as a row of the length-controlled fit."""
    rows = []
    for i, (item, by_judge) in enumerate(zip(items, votes.orders, strict=True)):
        delta = len(item.tuned) - len(item.base)
        for name, winners in by_judge.items():
            if judge is not None and name != judge:
                continue
            for order, winner in winners.items():
                y = stats.HALF[{"tuned": "win", "base": "loss", "tie": "tie"}[stats.tuned_side(order, winner)]]
                rows.append(Verdict(i, y, float(delta), order == "tb"))
    return rows


def with_lc(row: dict[str, Any], lc: Mapping[str, Any]) -> dict[str, Any]:
    """A win/tie/loss row with the length-controlled figures lifted beside the raw ones (reasons merged)."""
    out = {**row, **{k: lc[k] for k in LC_KEYS}, "length_control": dict(lc)}
    na = {**row.get("na", {}), **{k: v for k, v in lc.get("na", {}).items() if k in LC_KEYS}}
    if na:
        out["na"] = na
    return out


def worst_losses(items: Sequence[PairItem], votes: Votes, limit: int = WORST_QUOTED) -> list[dict[str, Any]]:
    """The prompts the base won most clearly: lowest mean vote first (all judges said loss), then record order."""
    scored = []
    for i, v in enumerate(votes.votes):
        if votes.outcomes[i] == "loss":
            scored.append((sum(stats.SCORE[x] for x in v.values()) / len(v), i))
    out = []
    for mean, i in sorted(scored)[:limit]:
        it = items[i]
        out.append({"id": it.rid, "mean_vote": round(mean, 4), "votes": votes.votes[i],
                    "prompt": it.prompt[-1]["content"][:QUOTE_CHARS], "reference": (it.reference or "")[:QUOTE_CHARS],
                    "tuned": it.tuned[:QUOTE_CHARS], "base": it.base[:QUOTE_CHARS], "reasons": votes.reasons[i]})
    return out


def build(items: Sequence[PairItem], records: Sequence[Mapping[str, Any]], votes: Votes, judges: Sequence[str],
          rows: Mapping[str, Sequence[Mapping[str, Any]]], max_new_tokens: int | None, run: Mapping[str, Any],
          labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    judged = [o for o in votes.outcomes if o is not None]
    rids = [it.rid for it in items]
    per_judge = {}
    for j in judges:
        mine = [v[j] for v in votes.votes if j in v]
        bias = stats.position_bias([o[j] for o in votes.orders if j in o])
        row = with_lc({**votes.status[j], **stats.win_tie_loss(mine)}, length_controlled(lc_verdicts(items, votes, j)))
        row.update(position_flip_rate=bias["position_flip_rate"], first_position_rate=bias["first_position_rate"],
                   position=bias)
        for k in ("position_flip_rate", "first_position_rate"):
            if k in bias.get("na", {}):
                row.setdefault("na", {})[k] = bias["na"][k]
        per_judge[j] = row
    agreement_h = None
    if labels is not None:
        agreement_h = human.figures(rids, votes.votes, votes.outcomes, judges, labels)
        for j in judges:
            per_judge[j]["human_agreement"] = agreement_h["per_judge"][j]
    missing = votes.missing
    return {
        **run,
        "method": {
            "vote": "a judge's vote is win/loss only when it prefers the same model in both orders (A/B and B/A); "
                    "a verdict that flips with the order, or a tie in either order, is a tie; a failed or invalid "
                    "verdict in either order is no vote (and the run is incomplete)",
            "outcome": "per prompt, the sign of the mean vote over the judges that voted (win +1, tie 0, loss -1)",
            "win_rate": "(wins + ties / 2) / n, as AlpacaEval, Chatbot Arena and MT-Bench count it; net = "
                        "(wins - losses) / n = 2 x win_rate - 1",
            "interval": "95% Wilson score interval with continuity correction on wins + ties/2 of n (exact coverage "
                        ">= 95% for every n and true rate: ties make the outcome's variance smaller than the "
                        "binomial's); net's interval is the same mapped by 2x - 1",
            "small_n": f"rows with n < {stats.SMALL_N} are marked small_n: their intervals are wide, read them so",
            "length_control": "AlpacaEval 2's length-controlled win rate for one pair of models: a logistic fit of "
                              "every usable verdict of both orders on tanh(tuned-minus-base length in characters / "
                              "its std) and the position of the tuned answer; the predicted win rate at zero length "
                              "difference, averaged over both positions (sftkit/evaluate/length_control.py)",
            "position": "position_flip_rate: share of prompts with a usable verdict in both orders whose preferred "
                        "model changes with the order; first_position_rate: share of usable verdicts picking "
                        "answer A",
            "chrf": "sacrebleu CHRF(char_order=6, word_order=0), beta 2, against the record's reference answer",
            "refusal_phrases": list(stats.REFUSAL_PHRASES), "refusal_window_chars": stats.REFUSAL_WINDOW,
            "anchors": ANCHORS,
        },
        "complete": not missing and not run.get("incomplete"),
        "missing_verdicts": len(missing), "missing_verdict_list": missing,
        "prompts": len(items), "judged": len(judged), "unjudged": len(items) - len(judged),
        "overall": with_lc(stats.win_tie_loss(judged), length_controlled(lc_verdicts(items, votes, None))),
        "per_category": grouped(votes.outcomes, [category_of(r) for r in records]),
        "per_source": grouped(votes.outcomes, [str(r.get("source") or "(none)") for r in records]),
        "per_judge": per_judge,
        "human_agreement": agreement_h if agreement_h is not None else {
            "na": "no --human-labels given", "anchors": human.MT_BENCH},
        "agreement": stats.judge_agreement(votes.votes, judges),
        "answers": {side: stats.side_figures(r, max_new_tokens) for side, r in rows.items()},
        "worst_losses": worst_losses(items, votes),
    }


# ---- Markdown -------------------------------------------------------------------------------------------------


def fig(row: Mapping[str, Any], key: str, pct: bool = False) -> str:
    """One figure of a row as text: a number, an interval, or `n/a (reason)`; never None."""
    x = row.get(key)
    if x is None:
        why = (row.get("na") or {}).get(key) if isinstance(row.get("na"), dict) else None
        return f"n/a ({why})" if why else "n/a"
    if isinstance(x, list | tuple) and len(x) == 2:
        return f"[{_num(x[0])}, {_num(x[1])}]"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.1%}" if pct else _num(x)
    return str(x)


def _num(x: float) -> str:
    text = f"{x:.2f}"
    return "0.00" if text == "-0.00" else text


def with_ci(row: Mapping[str, Any], key: str) -> str:
    """A figure and its interval (`key` + `_ci95`), or `n/a (reason)`."""
    if row.get(key) is None:
        return fig(row, key)
    return f"{fig(row, key)} {fig(row, key + '_ci95')}"


def n_text(row: Mapping[str, Any]) -> str:
    return f"{row['n']} (n<{stats.SMALL_N})" if row.get("small_n") and row["n"] else str(row["n"])


def wtl_table(rows: Mapping[str, Mapping[str, Any]], label: str, lc: bool = False) -> list[str]:
    head = f"| {label} | n | win | tie | loss | win rate (95% CI) | win − loss (95% CI) |"
    sep = "|---|---:|---:|---:|---:|---|---|"
    if lc:
        head += " LC win rate (95% CI) | length coef |"
        sep += "---|---:|"
    out = [head, sep]
    for name, w in rows.items():
        line = (f"| {name} | {n_text(w)} | {w['win']} | {w['tie']} | {w['loss']} | {with_ci(w, 'win_rate')} | "
                f"{with_ci(w, 'net')} |")
        if lc:
            line += f" {with_ci(w, 'lc_win_rate')} | {fig(w, 'length_coef')} |"
        out.append(line)
    return out


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text or "(empty)").splitlines() or ["(empty)"])


def markdown(rep: Mapping[str, Any]) -> str:
    lines = [f"# Eval: {rep['tuned']} vs {rep['base']}", ""]
    if not rep["complete"]:
        lines += [f"**INCOMPLETE: {rep['missing_verdicts']} verdict(s) missing or unusable. "
                  + (f"{rep['incomplete'][len('incomplete: '):]}. " if rep.get("incomplete") else "")
                  + "The figures below cover only what was judged.**", ""]
    c = rep.get("contamination") or {}
    lines += [f"{rep['prompts']} prompts compared from `{rep['input']}`, {rep['judged']} judged ({rep['unjudged']} "
              f"without any vote), judges: {', '.join(rep['judges'])}. "
              + (f"{c['found']} contaminated prompt(s) {'kept' if c.get('kept') else 'left out'}. " if c.get("checked")
                 else "Contamination not checked (no --train-file). ")
              + (f"{sum(rep['missing_answers'].values())} prompt(s) without an answer left out. "
                 if rep.get("missing_answers") and sum(rep["missing_answers"].values()) else ""), "",
              f"Vote: {rep['method']['vote']}. Outcome: {rep['method']['outcome']}. Win rate: "
              f"{rep['method']['win_rate']}. Interval: {rep['method']['interval']}. {rep['method']['small_n']}.", "",
              "## Win rate (tuned vs base)", ""]
    lines += wtl_table({"all": rep["overall"], **{f"judge {k}": v for k, v in rep["per_judge"].items()}}, "", lc=True)
    lines += ["", f"LC: {rep['method']['length_control']}. {ANCHORS['length']}.", "",
              "## Position bias", "", "| judge | flip rate | prompts in both orders | decisive flip rate | "
              "first-position rate | verdicts | A / B / tie |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, j in rep["per_judge"].items():
        p = j["position"]
        lines.append(f"| {name} | {fig(p, 'position_flip_rate')} | {p['n_both_orders']} | "
                     f"{fig(p, 'decisive_flip_rate')} | {fig(p, 'first_position_rate')} | {p['n_verdicts']} | "
                     f"{p['picks']['A']} / {p['picks']['B']} / {p['picks']['tie']} |")
    lines += ["", f"{rep['method']['position']}. Anchors: {ANCHORS['position']}.", "", "## Agreement with people", ""]
    h = rep["human_agreement"]
    if "per_judge" not in h:
        lines.append(f"n/a ({h['na']}). Anchors: {ANCHORS['human']}.")
    else:
        lines += [f"{h['labels']} labels, {h['labels_unmatched']} naming no compared prompt.", "",
                  "| judge | with ties | n | without ties | n | kappa |", "|---|---:|---:|---:|---:|---:|"]
        for name, a in [*h["per_judge"].items(), ("combined", h["combined"])]:
            lines.append(f"| {name} | {fig(a, 'with_ties')} | {a['n_with_ties']} | {fig(a, 'without_ties')} | "
                         f"{a['n_without_ties']} | {fig(a, 'kappa')} |")
        lines.append("| MT-Bench: GPT-4 vs humans | 0.66 | | 0.85 | | |")
        lines.append("| MT-Bench: human vs human | 0.63 | | 0.81 | | |")
    lines += ["", "## Per category", "", *wtl_table(rep["per_category"], "category")]
    lines += ["", "## Per source", "", *wtl_table(rep["per_source"], "source")]
    if c.get("checked"):
        lines += ["", "## Contamination", "", f"{c['method']}; {c['train_records']} training records in "
                  f"{', '.join(c['train_files'])}. {c['found']} eval prompt(s) found, "
                  f"{'kept in' if c.get('kept') else 'left out of'} the figures.", ""]
        for x in c["items"]:
            lines.append(f"- {x['id']}: Jaccard {x['jaccard']:.2f} with training record {x['train_id']}")
    ag = rep["agreement"]
    lines += ["", "## Judge agreement", "",
              f"Fleiss' kappa over the {ag['fleiss_n']} prompts every judge voted on: {fig(ag, 'fleiss_kappa')}.", ""]
    lines += [f"- {a} vs {b}: same vote on {fig(p, 'agree')} of {p['n']} prompts" for p in ag["pairs"]
              for a, b in [p["judges"]]]
    lines += ["", "## Judge-free figures", "",
              "| model | answers | chrF (corpus) | chrF (mean) | with reference | chars mean | chars median | "
              "tokens mean | refusal rate | hit max_new_tokens |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for side, f in rep["answers"].items():
        lines.append(f"| {side} | {f['answers']} | {fig(f['chrf'], 'corpus')} | {fig(f['chrf'], 'mean_sentence')} | "
                     f"{f['chrf']['n']} | {fig(f, 'chars_mean')} | {fig(f, 'chars_median')} | {fig(f, 'tokens_mean')}"
                     f" | {fig(f, 'refusal_rate')} | {fig(f, 'hit_max_new_tokens_rate')} |")
    lines += ["", f"chrF: {rep['method']['chrf']}.", "", "## Worst losses", ""]
    if not rep["worst_losses"]:
        lines.append("No loss: the base model won no prompt.")
    for w in rep["worst_losses"]:
        lines += [f"### {w['id']} (votes: {', '.join(f'{k} {v}' for k, v in w['votes'].items())})", "",
                  "Prompt:", _quote(w["prompt"]), ""]
        if w["reference"]:
            lines += ["Reference:", _quote(w["reference"]), ""]
        lines += ["Tuned:", _quote(w["tuned"]), "", "Base:", _quote(w["base"]), ""]
        for judge, by_order in w["reasons"].items():
            for order, reason in by_order.items():
                lines.append(f"- judge {judge} ({'A = tuned' if order == 'tb' else 'A = base'}): {reason[:300]}")
        lines.append("")
    if rep["missing_verdict_list"]:
        lines += ["## Missing or unusable verdicts", ""]
        lines += [f"- {m['id']} / judge {m['judge']} / order {m['order']}: {m['reason']}"
                  for m in rep["missing_verdict_list"][:200]]
        if len(rep["missing_verdict_list"]) > 200:
            lines.append(f"- … and {len(rep['missing_verdict_list']) - 200} more (eval_report.json lists all)")
    return "\n".join(lines).rstrip() + "\n"
