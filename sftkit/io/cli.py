"""The command-line rule every script shares: one parser, one usage error, one exit status table, one way to stop.

Exit status, the same in every script and stated in each `--help`:

    0    done
    1    something missing or failed (a partial result never exits 0; a rerun resumes)
    2    bad usage or input that makes the run impossible, a locked output included (one line, before any work)
    130  Ctrl-C (SIGINT)
    143  SIGTERM
    130 and 143 each after the one line INTERRUPTED, or RESTART in a script with no journal to resume from.

A script builds its parser with `ScriptParser` (an unknown flag or a bad value prints the one-line usage and
`error: ... (see --help)`, exit 2), raises `UsageError` for anything that makes the run impossible, and ends with
`sys.exit(run_script(main))`: SIGTERM then unwinds like Ctrl-C (every `finally` and `with` runs, so journals close
and servers stop) and both end with the one line and 130 / 143.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import textwrap
import threading
from collections.abc import Callable
from types import FrameType
from typing import IO, Any, NoReturn

USAGE = 2
SIGINT_EXIT, SIGTERM_EXIT = 128 + signal.SIGINT, 128 + signal.SIGTERM  # 130, 143: what a shell shows
INTERRUPTED = "interrupted: rerun the same command to resume"
RESTART = "interrupted: no output is half-written; rerun the same command to start again"


class UsageError(Exception):
    """Bad usage or input that makes the run impossible: one line, exit 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds exactly like Ctrl-C (and exits 143, not 130)."""


_owner_pid = os.getpid()  # the process that installs the handler (a forked child that inherits it is not)


def raise_terminated(signum: int, frame: FrameType | None) -> None:
    """A SIGTERM handler: `signal.signal(signal.SIGTERM, raise_terminated)`.

    Only in the process that installed it: a forked worker inherits the handler, and its pool ends it with SIGTERM
    (multiprocessing's Pool.terminate), where it must die quietly as by default, not print a traceback."""
    if os.getpid() != _owner_pid:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated


def exit_status_help(resumable: bool = True) -> str:
    """The exit status block every `--help` ends with."""
    again = "rerun the same command to resume" if resumable else "rerun the same command to start again"
    line = INTERRUPTED if resumable else RESTART
    return "\n".join([
        "exit status (the same for every sftkit script):",
        "  0    done",
        f"  1    something missing or failed: a partial result never exits 0; {again}",
        "  2    bad usage or input that makes the run impossible, a locked output included (one line, before any "
        "work starts)",
        "  130  Ctrl-C (SIGINT)",
        "  143  SIGTERM",
        f'       130 and 143 each after the one line "{line}"',
    ])


class ScriptParser(argparse.ArgumentParser):
    """argparse for every script: `--help` ends with the exit status rule; a usage error is two lines.

    `resumable`: whether a rerun of the same command resumes (a journaled stage) or starts again.
    """

    def __init__(self, *args: Any, resumable: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resumable = resumable

    def format_help(self) -> str:
        width = max(60, min(shutil.get_terminal_size().columns, 120) - 2)
        rule = "\n".join(textwrap.fill(line, width, subsequent_indent=" " * 7, break_on_hyphens=False)
                         for line in exit_status_help(self.resumable).splitlines())
        return super().format_help().rstrip("\n") + "\n\n" + rule + "\n"

    def format_usage(self) -> str:
        """One line: the program, the flags it cannot run without, `[options]` for the rest."""
        formatter = self._get_formatter()

        def shown(action: argparse.Action) -> str:
            if not action.option_strings:
                return formatter._format_args(action, formatter._get_default_metavar_for_positional(action))
            metavar = formatter._format_args(action, formatter._get_default_metavar_for_optional(action))
            return f"{action.option_strings[0]} {metavar}" if action.nargs != 0 else action.option_strings[0]

        parts = [f"usage: {self.prog}"]
        optional = False
        grouped = {id(a): g for g in self._mutually_exclusive_groups if g.required for a in g._group_actions}
        done: set[int] = set()
        for action in self._actions:
            group = grouped.get(id(action))
            if group is not None:  # one of these is required: (--a A | --b B)
                if id(group) not in done:
                    done.add(id(group))
                    parts.append("(" + " | ".join(shown(a) for a in group._group_actions) + ")")
            elif action.help == argparse.SUPPRESS:
                continue
            elif not action.option_strings or action.required:
                parts.append(shown(action))
            else:
                optional = True
        if optional:
            parts.insert(1, "[options]")
        return " ".join(parts) + "\n"

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(USAGE, f"error: {message} (see --help)\n")


def interrupted(exc: KeyboardInterrupt, *, resumable: bool = True, file: IO[str] | None = None) -> int:
    """Print the one interrupt line and give the exit status: 143 for SIGTERM (`Terminated`), else 130."""
    print(INTERRUPTED if resumable else RESTART, file=file or sys.stderr, flush=True)
    return SIGTERM_EXIT if isinstance(exc, Terminated) else SIGINT_EXIT


def run_script(main: Callable[[], int], *, resumable: bool = True) -> int:
    """`main()` with SIGTERM raised as `Terminated`; Ctrl-C and SIGTERM end with the one line and 130 / 143."""
    global _owner_pid
    previous = None
    if threading.current_thread() is threading.main_thread():
        _owner_pid = os.getpid()
        previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return main()
    except KeyboardInterrupt as e:
        return interrupted(e, resumable=resumable)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
