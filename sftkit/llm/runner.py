"""The journaled-request runner that generation, judging and evaluation share.

The loop every LLM stage runs: plan keyed requests -> read the journal -> send what is missing under the shared
client -> rebuild the outputs from the journal. A stage supplies only

- the requests (`Job`: a key, the messages, per-request options such as temperature, max_tokens or
  response_format, the endpoint that answers it, how many answers may be rejected, and its own `data`), and
- a reader (`Stage.read`): turns one answer into an `Answer` (the journal entry, an outcome label, or messages
  to ask again with), and `Stage.failed` for a request that failed for good while its endpoint was alive.

The runner owns the rest:

- **Keys and the journal.** `JournaledRun(path, key_fields)` opens the `Journal` (run lock: a second run on the
  same journal gets LockedError at once; a torn last line from a killed run is dropped) or, with
  `read_only=True`, only reads it (dry runs: no lock, nothing created or repaired). An entry's key is the value
  of its `key_fields` (one field: that value; several: a tuple); a later entry for a key wins. `index()`,
  `pending()` and `usage_by()` read it.
- **Sending.** `send()` sends every job under one `AsyncChatClient` per `Target` (endpoint policy, circuit
  breaker, rpm/tpm), at most max_concurrency jobs of a target at once, and journals each finished job the moment
  it ends. A target that refuses us (401/402/403/404, exhausted balance) stops every target; a journal that
  cannot be written stops every target (requests in flight finish, nothing new is bought that could not be
  kept). A job whose endpoint took no answer (down, refused, stopped) journals nothing, so a rerun asks again.
- **Accounting.** `RunResult.targets[name]`: jobs journaled, outcomes by label, jobs left without an entry by
  reason, tokens of the journaled jobs, the client's stats and why the endpoint stopped; `cost()` prices
  tokens with sftkit/llm/pricing.py.

    run = JournaledRun(path, ("key",))
    todo = run.pending(jobs)
    result = run.send(todo, {"": Target(base_url, api_key, model)}, MyStage())
    run.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from tqdm import tqdm

from sftkit.io.jsonl import Journal, JournalWriteError
from sftkit.llm.client import AsyncChatClient, ChatError, ChatResult, ClientStats, EndpointFailure, Usage
from sftkit.llm.pricing import estimate_cost

# client.chat() keyword arguments; any other option (response_format, seed, ...) goes into the request body as is.
CHAT_OPTIONS = ("temperature", "top_p", "max_tokens", "json_mode", "extra")


# ---- keys -----------------------------------------------------------------------------------------------------


def request_key(model: str, messages: Sequence[Mapping[str, str]]) -> str:
    """Generation's request key: sha1 of [model, messages] as JSON, 20 hex digits (journals depend on it)."""
    return hashlib.sha1(orjson.dumps([model, list(messages)])).hexdigest()[:20]


def prompt_hash(model: str, messages: Sequence[Mapping[str, str]]) -> str:
    """Judging's verdict key: sha256 of {"model", "messages"} with sorted keys, 20 hex digits."""
    raw = orjson.dumps({"model": model, "messages": list(messages)}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()[:20]


def entry_key(entry: Any, key_fields: Sequence[str]) -> Hashable | None:
    """The key of a journal entry (None for a line that is not one of ours)."""
    if not isinstance(entry, dict) or any(f not in entry for f in key_fields):
        return None
    if len(key_fields) == 1:
        return entry[key_fields[0]]
    return tuple(entry[f] for f in key_fields)


def usage_of(entry: Mapping[str, Any]) -> Usage:
    """The `usage` an entry recorded (unknown fields ignored, missing ones 0)."""
    u = entry.get("usage")
    if not isinstance(u, dict):
        return Usage()
    return Usage(**{k: int(v) for k, v in u.items() if k in Usage().__dict__})


def cost(model: str, usage: Usage, overrides: Mapping[str, Any] | None = None) -> float | None:
    """Estimated USD (6 decimals) for `usage` on `model`; None when no price is known or given."""
    c = estimate_cost(model, usage, dict(overrides) if overrides else None)
    return None if c is None else round(c, 6)


# ---- what a stage supplies ------------------------------------------------------------------------------------


@dataclass
class Job:
    """One keyed request. `options`: per-request chat options (temperature, top_p, max_tokens, json_mode, extra,
    or any body field such as response_format); `target`: the name of the Target that answers it; `tries`: how
    many answers the reader may ask for (1 + retries of a rejected answer); `data`: the stage's own."""

    key: Hashable
    messages: list[dict[str, str]]
    options: dict[str, Any] = field(default_factory=dict)
    target: str = ""
    tries: int = 1
    data: Any = None


@dataclass
class Tally:
    """What one job has cost so far: HTTP attempts, tokens of the answers received, answers read, seconds."""

    attempts: int = 0
    usage: Usage = field(default_factory=Usage)
    answers: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return round(time.monotonic() - self.started, 3)


@dataclass
class Answer:
    """A reader's verdict on one answer. `entry`: what to journal (None: nothing); `outcome`: its label in the
    accounting; `ok`: False counts it as failed on the progress bar; `retry`: messages to ask again with while
    the job has tries left (when none are left, `entry` is journaled)."""

    entry: dict[str, Any] | None
    outcome: str = "ok"
    ok: bool = True
    retry: list[dict[str, str]] | None = None


class Stage:
    """How a stage reads answers. Subclass and override `read` (and `failed` to journal failures)."""

    def read(self, job: Job, result: ChatResult, tally: Tally) -> Answer:
        raise NotImplementedError

    def failed(self, job: Job, err: ChatError, tally: Tally) -> Answer | None:
        """A request that failed for good (400, retries spent) while its endpoint still takes requests.
        None: journal nothing (the job counts under err.reason and a rerun asks again)."""
        return None


@dataclass
class Target:
    """One endpoint: base URL, key and model, with the client's knobs. `label` names it in messages."""

    base_url: str
    api_key: str
    model: str
    max_concurrency: int = 50
    timeout: float = 120.0
    retries: int = 5
    policy: dict[str, Any] = field(default_factory=dict)  # client.POLICY_DEFAULTS keys
    label: str = ""
    refused_note: str = ""  # why the other targets stop when this one refuses us (default: label + refused)


# ---- what the runner reports ----------------------------------------------------------------------------------


@dataclass
class TargetTally:
    jobs: int = 0  # jobs sent (or tried) this run
    journaled: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # journaled jobs by Answer.outcome
    failed: Counter[str] = field(default_factory=Counter)  # jobs left without an entry, by reason
    usage: Usage = field(default_factory=Usage)  # tokens of the journaled jobs
    client: ClientStats | None = None
    failure: EndpointFailure | None = None  # why the endpoint took no more requests (down, fatal, stopped)

    @property
    def not_journaled(self) -> int:
        return sum(self.failed.values())


@dataclass
class RunResult:
    targets: dict[str, TargetTally] = field(default_factory=dict)
    fatal: str = ""  # a target refused us: every target stopped sending
    write_error: str = ""  # the journal could not be written: every target stopped sending

    def down(self) -> dict[str, str]:
        """Target name -> one line, for every target the circuit breaker declared down."""
        return {n: t.failure.line() for n, t in self.targets.items() if t.failure is not None
                and t.failure.kind == "down"}


# ---- the runner -----------------------------------------------------------------------------------------------


class JournaledRun:
    """A journal keyed by `key_fields` and the sending of what it lacks (see the module doc)."""

    def __init__(self, path: str | os.PathLike[str], key_fields: Sequence[str], *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.key_fields = tuple(key_fields)
        self.journal: Journal | None = None
        self._entries: list[Any] = Journal.read(self.path) if read_only else []
        if not read_only:
            self.journal = Journal(self.path)  # LockedError / OSError go to the caller

    @property
    def entries(self) -> list[Any]:
        """Every complete entry, this run's appends included."""
        return self.journal.entries if self.journal is not None else self._entries

    def index(self) -> dict[Hashable, dict[str, Any]]:
        """Key -> the latest entry for it."""
        out: dict[Hashable, dict[str, Any]] = {}
        for e in self.entries:
            k = entry_key(e, self.key_fields)
            if k is not None:
                out[k] = e
        return out

    def pending(self, jobs: Iterable[Job], redo: Callable[[dict[str, Any]], bool] | None = None) -> list[Job]:
        """The jobs to send: those without an entry, and those whose entry `redo` says to ask again."""
        index = self.index()
        out = []
        for job in jobs:
            e = index.get(job.key)
            if e is None or (redo is not None and redo(e)):
                out.append(job)
        return out

    def usage_by(self, name_of: Callable[[dict[str, Any]], str | None]) -> dict[str, Usage]:
        """Tokens of every entry in the journal (all runs), summed per `name_of(entry)` (None: skipped)."""
        out: dict[str, Usage] = {}
        for e in self.entries:
            if isinstance(e, dict):
                name = name_of(e)
                if name is not None:
                    out.setdefault(name, Usage()).add(usage_of(e))
        return out

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()

    def __enter__(self) -> JournaledRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, jobs: Sequence[Job], targets: Mapping[str, Target], stage: Stage, *, seed: int | None = None,
             bar: Mapping[str, Any] | None = None) -> RunResult:
        """`asend` in a fresh event loop."""
        return asyncio.run(self.asend(jobs, targets, stage, seed=seed, bar=bar))

    async def asend(self, jobs: Sequence[Job], targets: Mapping[str, Target], stage: Stage, *,
                    seed: int | None = None, bar: Mapping[str, Any] | None = None) -> RunResult:
        """Send every job, journaling each as it ends; `bar`: tqdm keyword arguments (desc, unit, disable)."""
        if self.journal is None:
            raise RuntimeError("a read-only JournaledRun sends nothing")
        journal = self.journal
        result = RunResult()
        by_target: dict[str, list[Job]] = {}
        for job in jobs:
            if job.target not in targets:
                raise KeyError(f"job for unknown target {job.target!r}")
            by_target.setdefault(job.target, []).append(job)
        queues = {name: by_target[name] for name in targets if name in by_target}  # in the targets' order
        for name in queues:
            result.targets[name] = TargetTally()
        progress = tqdm(total=len(jobs), dynamic_ncols=True, **dict(bar or {}))
        clients: dict[str, AsyncChatClient] = {}
        failed_jobs = 0

        def stop_all(why: str) -> None:
            for c in clients.values():
                c.stop(why)

        def count_failed() -> None:
            nonlocal failed_jobs
            failed_jobs += 1
            progress.set_postfix(failed=failed_jobs, refresh=False)

        async def one(job: Job, target: Target, client: AsyncChatClient, tally: TargetTally) -> None:
            tally.jobs += 1
            t = Tally()
            answer = await ask(job, target, client, t, stage)
            if isinstance(answer, ChatError):  # no entry: counted by reason, a rerun asks again
                tally.failed[answer.reason] += 1
                f = client.failure
                if f is not None and f.kind == "fatal" and not result.fatal:
                    result.fatal = f.line()
                    stop_all(target.refused_note or f"{target.label or target.base_url} refused the request")
                count_failed()
                return
            if answer.entry is None:
                tally.failed[answer.outcome] += 1
                count_failed()
                return
            try:
                journal.append(answer.entry)
            except JournalWriteError as e:
                tally.failed["not_journaled"] += 1
                if not result.write_error:  # nothing more is bought that could not be kept
                    result.write_error = str(e)
                    stop_all("the journal cannot be written")
                return
            tally.journaled += 1
            tally.outcomes[answer.outcome] += 1
            tally.usage.add(t.usage)
            if not answer.ok:
                count_failed()

        async def worker(queue: asyncio.Queue[Job], target: Target, client: AsyncChatClient,
                         tally: TargetTally) -> None:
            while True:
                try:
                    job = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await one(job, target, client, tally)
                progress.update(1)

        async with contextlib.AsyncExitStack() as stack:
            tasks = []
            for name, todo in queues.items():
                tg = targets[name]
                client = await stack.enter_async_context(AsyncChatClient(
                    tg.base_url, tg.api_key, max_concurrency=tg.max_concurrency, timeout=tg.timeout,
                    retries=tg.retries, seed=seed, name=tg.label or tg.base_url, **tg.policy))
                clients[name] = client
                q: asyncio.Queue[Job] = asyncio.Queue()
                for job in todo:
                    q.put_nowait(job)
                tasks += [asyncio.create_task(worker(q, tg, client, result.targets[name]))
                          for _ in range(min(tg.max_concurrency, len(todo)))]
            try:
                if tasks:
                    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                    for task in done:
                        if task.exception() is not None:
                            raise task.exception()  # type: ignore[misc]
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                progress.close()
                for name, c in clients.items():
                    result.targets[name].client = c.stats
                    result.targets[name].failure = c.failure
        return result


async def ask(job: Job, target: Target, client: AsyncChatClient, tally: Tally,
              stage: Stage) -> Answer | ChatError:
    """One job to its end: ask, let the stage read the answer, ask again while it asks for that and tries are left.
    A ChatError: nothing to journal, because the endpoint took no answer (down, refused us, stopped) or the
    request failed for good and the stage's `failed` keeps nothing for it."""
    kwargs = {k: v for k, v in job.options.items() if k in CHAT_OPTIONS}
    body = {k: v for k, v in job.options.items() if k not in CHAT_OPTIONS}
    if body:
        kwargs["extra"] = {**body, **(kwargs.get("extra") or {})}
    messages = job.messages
    answer: Answer | None = None
    for _ in range(max(1, job.tries)):
        try:
            r = await client.chat(messages, target.model, **kwargs)
        except ChatError as e:
            if e.fatal or not e.sent or client.failure is not None:
                return e
            tally.attempts += e.attempts
            got = stage.failed(job, e, tally)
            return e if got is None else got
        tally.attempts += r.attempts
        tally.usage.add(r.usage)
        tally.answers += 1
        answer = stage.read(job, r, tally)
        if answer.retry is None:
            return answer
        messages = answer.retry
    assert answer is not None
    return answer
