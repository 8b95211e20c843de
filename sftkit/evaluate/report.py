"""eval_report.json and eval_report.md: win/tie/loss overall, per category and per source, judge agreement,
judge-free figures per model, and the worst losses quoted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sftkit.evaluate import stats
from sftkit.evaluate.pairwise import PairItem, Votes

WORST_QUOTED = 5
QUOTE_CHARS = 600


def category_of(record: Mapping[str, Any]) -> str:
    meta = record.get("meta") or {}
    return str(meta.get("category") or "(none)")


def grouped(outcomes: Sequence[str | None], keys: Sequence[str], seed: int) -> dict[str, Any]:
    groups: dict[str, list[str]] = {}
    for o, k in zip(outcomes, keys, strict=True):
        if o is not None:
            groups.setdefault(k, []).append(o)
    return {k: stats.win_tie_loss(v, seed=seed) for k, v in sorted(groups.items())}


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
          rows: Mapping[str, Sequence[Mapping[str, Any]]], max_new_tokens: int, seed: int,
          run: Mapping[str, Any]) -> dict[str, Any]:
    judged = [o for o in votes.outcomes if o is not None]
    return {
        **run,
        "method": {
            "vote": "a judge's vote is win/loss only when it prefers the same model in both orders (A/B and B/A); "
                    "a verdict that flips with the order, or a tie in either order, is a tie; a failed or invalid "
                    "verdict in either order is no vote",
            "outcome": "per prompt, the sign of the mean vote over the judges that voted (win +1, tie 0, loss -1)",
            "interval": f"95% percentile bootstrap over prompts ({stats.BOOTSTRAP_RESAMPLES} resamples, numpy "
                        f"default_rng({seed})) of the win rate wins/n and of the net score (wins - losses)/n",
            "chrf": "sacrebleu CHRF(char_order=6, word_order=0), beta 2, against the record's reference answer",
            "refusal_phrases": list(stats.REFUSAL_PHRASES), "refusal_window_chars": stats.REFUSAL_WINDOW,
        },
        "prompts": len(items), "judged": len(judged), "unjudged": len(items) - len(judged),
        "overall": stats.win_tie_loss(judged, seed=seed),
        "per_category": grouped(votes.outcomes, [category_of(r) for r in records], seed),
        "per_source": grouped(votes.outcomes, [str(r.get("source") or "(none)") for r in records], seed),
        "per_judge": {j: {**votes.status[j], **stats.win_tie_loss([v[j] for v in votes.votes if j in v], seed=seed)}
                      for j in judges},
        "agreement": stats.judge_agreement(votes.votes, judges),
        "answers": {side: stats.side_figures(r, max_new_tokens) for side, r in rows.items()},
        "worst_losses": worst_losses(items, votes),
    }


def ci_text(ci: Sequence[float] | None) -> str:
    return "—" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def _f(x: Any) -> str:
    return "—" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)


def wtl_table(rows: Mapping[str, Mapping[str, Any]], label: str) -> list[str]:
    out = [f"| {label} | n | win | tie | loss | win rate (95% CI) | win − loss (95% CI) |",
           "|---|---:|---:|---:|---:|---|---|"]
    for name, w in rows.items():
        out.append(f"| {name} | {w['n']} | {w['win']} | {w['tie']} | {w['loss']} | {_f(w['win_rate'])} "
                   f"{ci_text(w['win_rate_ci95'])} | {_f(w['net'])} {ci_text(w['net_ci95'])} |")
    return out


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text or "(empty)").splitlines() or ["(empty)"])


def markdown(rep: Mapping[str, Any]) -> str:
    lines = [f"# Eval: {rep['tuned']} vs {rep['base']}", "",
             f"{rep['prompts']} prompts from `{rep['input']}`, {rep['judged']} judged ({rep['unjudged']} without "
             f"any vote), judges: {', '.join(rep['judges'])}. Tuned vs base; {rep['method']['vote']}. "
             f"Outcome: {rep['method']['outcome']}. Interval: {rep['method']['interval']}.", "",
             "## Win / tie / loss (tuned vs base)", ""]
    lines += wtl_table({"all": rep["overall"], **{f"judge {k}": v for k, v in rep["per_judge"].items()}}, "")
    lines += ["", "## Per category", "", *wtl_table(rep["per_category"], "category")]
    lines += ["", "## Per source", "", *wtl_table(rep["per_source"], "source")]
    ag = rep["agreement"]
    lines += ["", "## Judge agreement", "",
              f"Fleiss' kappa over the {ag['fleiss_n']} prompts every judge voted on: {_f(ag['fleiss_kappa'])}.", ""]
    lines += [f"- {a} vs {b}: same vote on {_f(p['agree'])} of {p['n']} prompts" for p in ag["pairs"]
              for a, b in [p["judges"]]]
    lines += ["", "## Judge-free figures", "",
              "| model | answers | chrF (corpus) | chrF (mean) | with reference | chars mean | chars median | "
              "tokens mean | refusal rate | hit max_new_tokens |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for side, f in rep["answers"].items():
        lines.append(f"| {side} | {f['answers']} | {_f(f['chrf']['corpus'])} | {_f(f['chrf']['mean_sentence'])} | "
                     f"{f['chrf']['n']} | {_f(f['chars_mean'])} | {_f(f['chars_median'])} | {_f(f['tokens_mean'])} | "
                     f"{_f(f['refusal_rate'])} | {_f(f['hit_max_new_tokens_rate'])} |")
    lines += ["", f"chrF: {rep['method']['chrf']}. Max new tokens: {rep['max_new_tokens']}.", "", "## Worst losses", ""]
    if not rep["worst_losses"]:
        lines.append("None: the base model won no prompt.")
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
    return "\n".join(lines).rstrip() + "\n"
