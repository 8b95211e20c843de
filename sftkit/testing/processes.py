"""Process-tree look-ups for the tests that check no server is left behind (local teacher, gen, judge)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable

from sftkit.llm.teacher_guard import proc_table


def live(pids: Iterable[int]) -> list[int]:
    """The pids that still exist as processes (zombies are dead: they hold no memory), sorted."""
    table = proc_table()
    return sorted(pid for pid in pids if pid in table and table[pid][0] != "Z")


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, found by parent links."""
    children: dict[int, list[int]] = {}
    for child, (_, ppid, _) in proc_table().items():
        children.setdefault(ppid, []).append(child)
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def wait_gone(pids: Iterable[int], seconds: float = 120) -> list[int]:
    """Wait (bounded) until none of `pids` lives; the ones still alive at the deadline."""
    pids = list(pids)
    deadline = time.monotonic() + seconds
    while live(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return live(pids)


def one_line_stderr(proc: subprocess.Popen[str], code: int) -> str:
    """Wait for `proc` (bounded), check it exited with `code` and said exactly one line on stderr; that line."""
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]
