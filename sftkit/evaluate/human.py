"""Agreement of the judges with people: --human-labels FILE (JSONL, one line per labelled prompt:
{"id": RECORD_ID, "winner": "tuned" | "base" | "tie"}).

For a judge (or the judges' combined outcome) against the labels, over the labelled prompts it voted on:
with_ties = share where its vote (win / tie / loss of the tuned model) equals the label (tuned = win, base = loss);
without_ties = the same share over the prompts where neither the vote nor the label is a tie; Cohen's kappa over
the three categories (with ties). MT-Bench (Zheng et al. 2023, Table: agreement between GPT-4 and humans on its
human-judgement set) measured these the same way, after turning an order-dependent verdict into a tie as we do:
GPT-4 vs humans 66% with ties / 85% without, human vs human 63% / 81%."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sftkit.evaluate import stats
from sftkit.io.jsonl import BadLines, iter_jsonl

log = logging.getLogger(__name__)

LABELS = {"tuned": "win", "base": "loss", "tie": "tie"}
MT_BENCH = {"source": "MT-Bench (Zheng et al. 2023), agreement on its human-judgement set",
            "gpt4_vs_human": {"with_ties": 0.66, "without_ties": 0.85},
            "human_vs_human": {"with_ties": 0.63, "without_ties": 0.81}}


class LabelsError(ValueError):
    """A labels file that cannot be used (exit 2)."""


def read_labels(path: str, bad: BadLines) -> dict[str, str]:
    """Record id -> the label as an outcome of the tuned model (win / tie / loss). Bad lines are reported
    `file:line: reason` and counted; an id labelled twice with different winners is bad too."""
    if not Path(path).is_file():
        raise LabelsError(f"--human-labels {path}: no such file")
    out: dict[str, str] = {}
    for lineno, obj in iter_jsonl(path, bad):
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str | int) or str(obj["id"]) == "":
            bad.add(path, lineno, "a label needs an `id`")
            continue
        winner = str(obj.get("winner", "")).strip().lower()
        if winner not in LABELS:
            bad.add(path, lineno, f"winner must be tuned, base or tie, got {obj.get('winner')!r}")
            continue
        rid = str(obj["id"])
        if rid in out and out[rid] != LABELS[winner]:
            bad.add(path, lineno, f"id {rid!r} labelled twice with different winners")
            continue
        out[rid] = LABELS[winner]
    if not out:
        raise LabelsError(f"--human-labels {path}: no usable label ({bad.count} bad lines)")
    return out


def agreement(votes: Mapping[str, str], labels: Mapping[str, str]) -> dict[str, Any]:
    """`votes`: record id -> this judge's (or the combined) outcome; `labels`: record id -> the people's."""
    both = [rid for rid in labels if rid in votes]
    decisive = [rid for rid in both if votes[rid] != "tie" and labels[rid] != "tie"]
    kappa, why = stats.cohen_kappa([votes[r] for r in both], [labels[r] for r in both])
    out: dict[str, Any] = {
        "with_ties": round(sum(votes[r] == labels[r] for r in both) / len(both), 4) if both else None,
        "without_ties": round(sum(votes[r] == labels[r] for r in decisive) / len(decisive), 4) if decisive else None,
        "n_with_ties": len(both), "n_without_ties": len(decisive),
        "kappa": None if kappa is None else round(kappa, 4)}
    na = {}
    if not both:
        na["with_ties"] = "no labelled prompt with a vote"
    if not decisive:
        na["without_ties"] = "no labelled prompt where neither the vote nor the label is a tie"
    if kappa is None:
        na["kappa"] = why
    if na:
        out["na"] = na
    return out


def figures(rids: Sequence[str], votes: Sequence[Mapping[str, str]], outcomes: Sequence[str | None],
            judges: Sequence[str], labels: Mapping[str, str]) -> dict[str, Any]:
    """Per judge and for the combined outcome, over the compared prompts; plus how many labels matched."""
    known = set(rids)
    per_judge = {j: agreement({r: v[j] for r, v in zip(rids, votes, strict=True) if j in v}, labels)
                 for j in judges}
    combined = agreement({r: o for r, o in zip(rids, outcomes, strict=True) if o is not None}, labels)
    unmatched = sorted(set(labels) - known)
    if unmatched:
        log.warning("%d human label(s) name no compared prompt (first: %s)", len(unmatched), unmatched[0])
    return {"labels": len(labels), "labels_unmatched": len(unmatched), "per_judge": per_judge,
            "combined": combined, "anchors": MT_BENCH}
