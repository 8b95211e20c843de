"""Pairwise judging of tuned vs base on the shared runner (sftkit/llm/runner.py), in both orders.

Every (prompt, judge) is asked twice: order `tb` shows the tuned answer as A and the base answer as B, order `bt`
the other way round. A judge's vote on a prompt is `win` (tuned better) only when it prefers the tuned answer in
both orders, `loss` when it prefers the base answer in both, and `tie` otherwise: a verdict that flips with the
order (position bias), or a tie in either order. A judge whose verdict in either order is missing, failed or
invalid gives no vote on that prompt (and makes the run incomplete: eval.py exits 1). The prompt's outcome is the
sign of the mean of its votes (win +1, tie 0, loss -1); a prompt with no vote is left out of the win/tie/loss
figures (counted as `unjudged`).

A verdict's journal key is (the prompt's content id, judge, order, hash of the judge model and the judge prompt):
never a line number, so inserting a line into the input buys nothing again. A request that failed for a transient
reason (5xx, 429, timeout, connection, an empty or broken body, retries spent) is journaled with `transient`: a plain
rerun asks it again; an unusable verdict (`invalid`) or a request the endpoint rejected (400) is asked again only
with --retry-failed.

Judges are configured as for judge.py (sftkit/distill/judging.py: `judges`, `judge_defaults`, keys, policy).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sftkit.distill import judging as jg
from sftkit.evaluate.stats import tuned_side as tuned_side
from sftkit.io.records import content_id
from sftkit.llm.client import ChatError, ChatResult, policy_kwargs
from sftkit.llm.jsonextract import extract_json
from sftkit.llm.runner import Answer, Job, JournaledRun, RunResult, Stage, Tally, Target, prompt_hash

ORDERS = ("tb", "bt")  # tb: A = tuned, B = base; bt: A = base, B = tuned
KEY_FIELDS = ("cid", "judge", "order", "ph")
WINNERS = ("A", "B", "tie")

PAIR_SYSTEM = ("你是公正、严格的回答质量评审员。你将看到一个用户问题和两个助手的回答（回答A、回答B），"
               "有时还有一个参考答案。请先逐条写出比较理由，再给出结论。回答的先后顺序与质量无关，"
               "不要因为回答的位置或长度而偏向任何一方。你只输出一个 JSON 对象。")
VERDICT_FORMAT = ('{"reasons": "先写比较理由：准确性、完整性、是否切题、是否有害", "winner": "A 或 B 或 tie"}')


def build_pair_messages(prompt: Sequence[Mapping[str, str]], reference: str | None, answer_a: str,
                        answer_b: str) -> list[dict[str, str]]:
    """The judge prompt: the conversation, the reference when the record has one, both answers, and the verdict
    format with the reasons asked for before the winner."""
    parts = ["[对话]\n" + jg.render_conversation(prompt)]
    if reference:
        parts.append("[参考答案开始]\n" + reference + "\n[参考答案结束]\n"
                     "（参考答案可能并非唯一正确的回答，用来核对事实与要点。）")
    parts.append("[回答A开始]\n" + answer_a + "\n[回答A结束]")
    parts.append("[回答B开始]\n" + answer_b + "\n[回答B结束]")
    parts.append("请比较两个回答对最后一个用户问题的回答质量。先写理由，再写结论；结论只能是 A、B 或 tie（不相上下）。"
                 "只输出如下 JSON：\n" + VERDICT_FORMAT)
    return [{"role": "system", "content": PAIR_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def parse_winner(text: str) -> tuple[str, str]:
    """(winner A/B/tie, reasons) from a judge reply; ValueError names what is wrong."""
    try:
        obj = extract_json(text)
    except ValueError as e:
        raise ValueError(f"no JSON object in the reply ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError("the reply is not a JSON object")
    raw = obj.get("winner", obj.get("verdict"))
    w = str(raw).strip().strip("[]\"'").upper() if raw is not None else ""
    w = {"TIE": "tie", "平局": "tie", "不相上下": "tie", "回答A": "A", "回答B": "B"}.get(w, w)
    if w not in WINNERS:
        raise ValueError(f"winner must be A, B or tie, got {raw!r}")
    reasons = obj.get("reasons", "")
    return w, reasons if isinstance(reasons, str) else str(reasons)


def retry_messages(messages: list[dict[str, str]], bad_reply: str, reason: str) -> list[dict[str, str]]:
    return [*messages, {"role": "assistant", "content": bad_reply[:2000]},
            {"role": "user", "content": f"你的回复无法使用：{reason}。请只输出如下 JSON：\n{VERDICT_FORMAT}"}]


def combine_orders(tb: str, bt: str) -> str:
    """The two orders' preferences -> the judge's vote: consistent preference counts, anything else ties."""
    if tb == bt == "tuned":
        return "win"
    if tb == bt == "base":
        return "loss"
    return "tie"


@dataclass
class PairItem:
    """One prompt to judge: the record id, the prompt conversation, the reference, both answers."""

    rid: str
    prompt: list[dict[str, str]]
    reference: str | None
    tuned: str
    base: str

    @property
    def cid(self) -> str:
        """The prompt's content id (conversation + reference): what keys its verdicts."""
        ref = [{"role": "assistant", "content": self.reference}] if self.reference else []
        return content_id([*self.prompt, *ref])

    def messages(self, order: str) -> list[dict[str, str]]:
        a, b = (self.tuned, self.base) if order == "tb" else (self.base, self.tuned)
        return build_pair_messages(self.prompt, self.reference, a, b)


def jobs_for(items: Sequence[PairItem], judges: Sequence[jg.JudgeSpec]) -> list[Job]:
    jobs = []
    for item in items:
        for order in ORDERS:
            msgs = item.messages(order)
            for j in judges:
                jobs.append(Job((item.cid, j.name, order, prompt_hash(j.model, msgs)), msgs,
                                {"temperature": j.temperature, "max_tokens": j.max_tokens, "json_mode": j.json_mode,
                                 "extra": j.extra}, target=j.name, tries=j.verdict_retries + 1, data=(j, item.rid)))
    return jobs


def targets_for(judges: Sequence[jg.JudgeSpec]) -> dict[str, Target]:
    """Each judge is its own endpoint: its own policy, circuit breaker and backoff (as in judge.py)."""
    return {j.name: Target(j.base_url, j.api_key, j.model, max_concurrency=j.max_concurrency, timeout=j.timeout,
                           retries=j.retries, policy=policy_kwargs(j.policy),
                           label=f"judge {j.name!r} ({j.model} at {j.base_url})",
                           refused_note=f"judge {j.name!r} refused the request") for j in judges}


class PairStage(Stage):
    """A valid winner is journaled ok; an invalid reply is asked again until verdict_retries are spent, then
    journaled as `invalid`; a request that failed for good is journaled as `request:REASON`. Neither is a vote."""

    @staticmethod
    def _entry(job: Job, tally: Tally) -> dict[str, Any]:
        cid, name, order, ph = job.key  # type: ignore[misc]
        judge, rid = job.data
        return {"cid": cid, "rid": rid, "judge": name, "order": order, "ph": ph, "model": judge.model,
                "attempts": tally.attempts, "usage": tally.usage.as_dict(), "ts": time.time()}

    def read(self, job: Job, result: ChatResult, tally: Tally) -> Answer:
        entry = self._entry(job, tally)
        try:
            winner, reasons = parse_winner(result.content)
        except ValueError as e:
            entry.update(ok=False, error="invalid", detail=str(e)[:300], raw=result.content[:500])
            return Answer(entry, outcome="invalid", ok=False, retry=retry_messages(job.messages, result.content,
                                                                                    str(e)))
        entry.update(ok=True, winner=winner, reasons=reasons[:2000])
        return Answer(entry, outcome="verdict")

    def failed(self, job: Job, err: ChatError, tally: Tally) -> Answer:
        entry = self._entry(job, tally)
        # exhausted: retries spent on a retryable answer (5xx, 429, timeout, ...): worth asking on a plain rerun
        entry.update(ok=False, error=f"request:{err.reason}", detail=err.detail[:300], transient=err.exhausted)
        return Answer(entry, outcome=entry["error"], ok=False)


def redo(retry_failed: bool) -> Any:
    """Which journaled verdicts a run asks again: transient request failures always; with --retry-failed every
    verdict that is not a usable one."""
    def ask_again(entry: dict[str, Any]) -> bool:
        if entry.get("ok") and entry.get("winner") in WINNERS:
            return False
        return retry_failed or bool(entry.get("transient"))
    return ask_again


def send(run: JournaledRun, pending: list[Job], judges: Sequence[jg.JudgeSpec], seed: int) -> RunResult:
    return run.send(pending, targets_for(judges), PairStage(), seed=seed,
                    bar={"unit": "verdict", "desc": "judging", "disable": None})


@dataclass
class Votes:
    """Per prompt: judge -> vote (win/tie/loss), the outcome, and each judge's usable winners by order; per judge,
    how its verdicts ended; every verdict that is missing or unusable, with why."""

    votes: list[dict[str, str]]
    outcomes: list[str | None]  # None: no judge voted
    reasons: list[dict[str, dict[str, str]]]  # per prompt: judge -> order -> reasons
    status: dict[str, dict[str, int]]  # judge -> {vote, failed, missing}
    orders: list[dict[str, dict[str, str]]] = field(default_factory=list)  # per prompt: judge -> order -> A/B/tie
    missing: list[dict[str, str]] = field(default_factory=list)  # {id, judge, order, reason}


def verdict_problem(entry: Mapping[str, Any] | None) -> str:
    """Why a journaled verdict is no vote ("" when it is one)."""
    if entry is None:
        return "not asked yet (the endpoint was down, refused us or the run stopped)"
    if entry.get("ok") and entry.get("winner") in WINNERS:
        return ""
    err = str(entry.get("error") or "invalid")
    detail = str(entry.get("detail") or "")[:160]
    if err == "invalid":
        return "unusable verdict" + (f": {detail}" if detail else "")
    return err.replace("request:", "request failed: ") + (" (transient)" if entry.get("transient") else "") + (
        f": {detail}" if detail else "")


def collect(items: Sequence[PairItem], judges: Sequence[jg.JudgeSpec], index: Mapping[Any, dict[str, Any]]) -> Votes:
    out = Votes([], [], [], {j.name: {"vote": 0, "failed": 0, "missing": 0} for j in judges})
    for item in items:
        votes: dict[str, str] = {}
        reasons: dict[str, dict[str, str]] = {}
        winners: dict[str, dict[str, str]] = {}
        for j in judges:
            prefs: dict[str, str] = {}
            state = "vote"
            for order in ORDERS:
                e = index.get((item.cid, j.name, order, prompt_hash(j.model, item.messages(order))))
                problem = verdict_problem(e)
                if problem:
                    out.missing.append({"id": item.rid, "judge": j.name, "order": order, "reason": problem})
                    state = "missing" if e is None and state == "vote" else "failed" if e is not None else state
                    continue
                assert e is not None
                prefs[order] = tuned_side(order, e["winner"])
                winners.setdefault(j.name, {})[order] = e["winner"]
                reasons.setdefault(j.name, {})[order] = str(e.get("reasons", ""))
            out.status[j.name][state] += 1
            if state == "vote":
                votes[j.name] = combine_orders(prefs["tb"], prefs["bt"])
        out.votes.append(votes)
        out.reasons.append(reasons)
        out.orders.append(winners)
        if votes:
            mean = sum({"win": 1, "tie": 0, "loss": -1}[v] for v in votes.values()) / len(votes)
            out.outcomes.append("win" if mean > 0 else "loss" if mean < 0 else "tie")
        else:
            out.outcomes.append(None)
    return out
