"""Guardian of a local teacher server: runs it, and takes its whole process tree down with it.

    python teacher_guard.py WATCH_FD GRACE_S -- CMD...

Started by `sftkit.llm.local_teacher` in a session of its own (so a terminal's Ctrl-C reaches only the parent,
which then stops the server in order). It starts CMD (vLLM's api_server) in a new process group, prints the
server's pid on stdout, and then waits for one of:

- WATCH_FD reads end-of-file: the parent closed its end, or died in any way, SIGKILL included (the kernel closes
  a dead process's descriptors; no signal handler has to run);
- the server exits by itself (a crash, the kernel's OOM killer);
- SIGTERM / SIGINT / SIGHUP sent to the guardian.

Then it sends SIGTERM to the server's process group (vLLM's api_server, EngineCore and workers share it), waits
GRACE_S seconds, sends SIGKILL to what is left, and exits only once every descendant is reaped: the guardian is
the children's subreaper (Linux), so the engine processes an exiting api_server leaves behind become its
children and cannot outlive it. Exit status: the server's own when it ended by itself (128 + signal when a
signal killed it), 0 when the guardian stopped it.

Stdlib only, run by path with any Python: it must not import the package.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


class _Stop(Exception):
    """Raised by the signal handlers to leave the wait loop."""


def _on_signal(signum: int, frame: object) -> None:
    raise _Stop(signum)


def _become_subreaper() -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap() -> None:
    """Collect every child that has exited (the server and orphaned engine processes alike)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _group_alive(pgid: int) -> bool:
    _reap()
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def proc_table() -> dict[int, tuple[str, int, int]]:
    """{pid: (state, parent pid, process group)} of every process, from /proc (Linux; empty elsewhere)."""
    table: dict[int, tuple[str, int, int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
        if len(fields) > 2:
            table[int(name)] = (fields[0], int(fields[1]), int(fields[2]))
    return table


def _children() -> list[int]:
    me = os.getpid()
    return [pid for pid, (_, ppid, _) in proc_table().items() if ppid == me]


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _take_down(server: subprocess.Popen, grace: float) -> None:
    pgid = server.pid
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)
    # Anything that left the group (a setsid grandchild) is still our child as the subreaper: kill it by pid.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _reap()
        left = _children()
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write("usage: teacher_guard.py WATCH_FD GRACE_S -- CMD...\n")
        return 2
    watch_fd, grace, cmd = int(argv[0]), float(argv[1]), argv[3:]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    _become_subreaper()
    server = None
    status = 0
    try:
        # The server writes its log where the guardian's stderr goes; the watch pipe is not passed on.
        server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(),
                                  stderr=sys.stderr.fileno(), start_new_session=True)
        sys.stdout.write(f"{server.pid}\n")
        sys.stdout.flush()
        while True:
            ready, _, _ = select.select([watch_fd], [], [], 0.5)
            if ready and not os.read(watch_fd, 1):
                break
            code = server.poll()
            if code is not None:
                status = code if code >= 0 else 128 - code
                break
    except _Stop:
        pass
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if server is not None:
            _take_down(server, grace)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
