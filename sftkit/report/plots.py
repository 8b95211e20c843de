"""The report's figures: matplotlib (Agg, no display), each returned as base64 PNG for embedding in the HTML."""

from __future__ import annotations

import base64
import io
from typing import Any

ROLE_COLORS = {"system": "#8c6d31", "user": "#3182bd", "assistant": "#31a354"}
PHASE_STYLE = {"before": {"alpha": 0.45}, "after": {"alpha": 0.9, "histtype": "step", "linewidth": 2}}


def available() -> str:
    """'' when matplotlib can be imported, else why not (the report then has tables only)."""
    try:
        _plt()
    except ImportError as e:
        return f"matplotlib is not installed ({e}); figures are left out, the tables are complete"
    return ""


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Chinese judge or source names render when a CJK font is installed (fallback after DejaVu)
    plt.rcParams["font.sans-serif"] = ["DejaVu Sans", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei",
                                       "Noto Sans CJK SC", "Noto Sans CJK JP"]
    return plt


def _png(fig: Any) -> str:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def funnel(steps: list[dict[str, Any]], title: str) -> str | None:
    rows = [s for s in steps if s["count"] is not None]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 0.38 * len(rows) + 1.0))
    labels = [s["label"] for s in rows][::-1]
    counts = [s["count"] for s in rows][::-1]
    bars = ax.barh(range(len(rows)), counts, color="#6baed6")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    top = max(counts) or 1
    for b, c in zip(bars, counts, strict=True):
        ax.text(b.get_width() + top * 0.01, b.get_y() + b.get_height() / 2, f"{c:,}", va="center", fontsize=8)
    ax.set_xlim(0, top * 1.15)
    ax.set_title(title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def lengths(sets: list[dict[str, Any]], unit: str, title: str) -> str | None:
    roles = [r for r in ROLE_COLORS if any(r in s.get(unit, {}) for s in sets)]
    if not roles:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(roles), figsize=(3.4 * len(roles), 2.6), squeeze=False)
    for ax, role in zip(axes[0], roles, strict=True):
        vals = [v for s in sets for v in s.get(unit, {}).get(role, [])]
        lo, hi = (min(vals), max(vals)) if vals else (0, 1)
        hi = max(hi, lo + 1)
        bins = min(40, max(5, hi - lo))
        for s in sets:
            xs = s.get(unit, {}).get(role)
            if xs:
                ax.hist(xs, bins=bins, range=(lo, hi), density=True, color=ROLE_COLORS[role],
                        label=f"{s['phase']}: {s['label']}", **PHASE_STYLE[s["phase"]])
        ax.set_title(f"{role} ({unit})", fontsize=9)
        ax.set_yticks([])
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def judge_scores(sc: dict[str, Any]) -> str | None:
    judges, dims = sc["judges"], sc["dimensions"]
    if not judges or not dims or not any(any(v) for v in sc["per_dimension"].values()):
        return None
    plt = _plt()
    lo, hi = sc["scale"]
    fig, axes = plt.subplots(len(judges), len(dims), figsize=(2.0 * len(dims), 1.5 * len(judges) + 0.6),
                             squeeze=False, sharex=True)
    for r, name in enumerate(judges):
        for c, d in enumerate(dims):
            ax = axes[r][c]
            xs = sc["per_dimension"].get(name, {}).get(d, [])
            ax.hist(xs, bins=int(hi - lo) + 1, range=(lo - 0.5, hi + 0.5), color="#9e9ac8")
            ax.tick_params(labelsize=6)
            if r == 0:
                ax.set_title(d, fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle("verdict scores per judge (rows) and dimension (columns)", fontsize=9)
    return _png(fig)


def avg_scores(sc: dict[str, Any]) -> str | None:
    if not sc["avg_scores"]:
        return None
    plt = _plt()
    lo, hi = sc["scale"]
    fig, ax = plt.subplots(figsize=(6, 2.4))
    ax.hist(sc["avg_scores"], bins=2 * int(hi - lo), range=(lo, hi), color="#756bb1")
    if sc.get("threshold") is not None:
        ax.axvline(sc["threshold"], color="#e6550d", linestyle="--", label=f"threshold {sc['threshold']}")
        ax.legend(fontsize=7)
    ax.set_xlabel("weighted score of the record (all judges)", fontsize=8)
    ax.tick_params(labelsize=7)
    return _png(fig)


def agreement(sc: dict[str, Any]) -> str | None:
    pairs = [p for p in sc["pairs"] if p["points"]]
    if not pairs:
        return None
    plt = _plt()
    lo, hi = sc["scale"]
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.0 * len(pairs), 3.0), squeeze=False)
    for ax, p in zip(axes[0], pairs, strict=True):
        xs, ys = zip(*p["points"], strict=True)
        ax.scatter(xs, ys, s=10, alpha=0.5, color="#636363")
        ax.plot([lo, hi], [lo, hi], color="#bdbdbd", linewidth=1)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(p["judges"][0], fontsize=8)
        ax.set_ylabel(p["judges"][1], fontsize=8)
        ax.tick_params(labelsize=7)
    return _png(fig)


def bars(groups: dict[str, dict[str, float]], title: str, ylabel: str) -> str | None:
    """Grouped bars: {group label: {series: value}}."""
    series = list(dict.fromkeys(k for v in groups.values() for k in v))
    if not groups or not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(groups) * max(1, len(series)) + 1.5), 2.8))
    width = 0.8 / len(series)
    names = list(groups)
    for i, s in enumerate(series):
        ax.bar([x + i * width for x in range(len(names))], [groups[g].get(s, 0) for g in names], width, label=s)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(names))], names, fontsize=7,
                  rotation=15 if len(names) > 4 else 0)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)
