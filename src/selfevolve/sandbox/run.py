"""Run untrusted Python: :func:`run_python` (one program), :func:`run_tests` (a test program that must prove it
reached its end) and :func:`run_many` (a thread pool of either).

Every run gets a fresh temporary work directory (its ``HOME`` and ``TMPDIR``, removed afterwards), a scrubbed
environment, ``python -I`` (no user site, no ``PYTHON*`` variables, no script folder on ``sys.path``), its own
session, and resource limits set inside the child: CPU seconds, address space, tasks (``RLIMIT_NPROC``), file
size, open files, no core files. When the program ends or runs out of time, its whole process group is killed,
then whatever escaped the group (see :mod:`selfevolve.sandbox.isolation` for how per tier).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from selfevolve.errors import SelfEvolveError
from selfevolve.sandbox.isolation import MARKER_VAR, TIERS, Isolation, candidates, count_tasks, kill_marked

STATUSES = ("ok", "failed", "timeout", "memory", "killed", "error")
OUTPUT_LIMIT = 64 * 1024  # bytes kept of each of stdout and stderr
TIMEOUT_S = 10.0
MEMORY_MB = 512
MIN_MEMORY_MB = 64
MAX_TASKS = 64  # processes and threads one run may have (RLIMIT_NPROC)
MAX_FILE_BYTES = 64 * 1024 * 1024  # RLIMIT_FSIZE
MAX_OPEN_FILES = 256
PROGRAM = "main.py"
DRAIN_S = 1.0  # how long to wait for the pipes to close once every process of the run is dead
BOOTSTRAP = str(Path(__file__).with_name("_bootstrap.py"))
PROBE = "import json, os\nprint('ok')\n"


@dataclass(frozen=True)
class RunResult:
    """How a sandboxed program ended. ``stdout``/``stderr`` keep the first and last bytes of longer output.

    ``cpu_s`` is the larger of the kernel's count for the launched process and what the program reported when
    it ended by itself; under bubblewrap the kernel's count misses the sandbox, so a killed run shows ~0 there.
    """

    status: str  # one of STATUSES
    exit_code: int | None  # None when it did not exit by itself (signal, timeout, harness error)
    stdout: str
    stderr: str
    truncated: bool  # stdout or stderr was longer than OUTPUT_LIMIT bytes
    wall_s: float
    cpu_s: float
    isolation: str  # the tier that protected the run: bwrap, netns or process
    detail: str = ""  # one line on why the status is what it is

    @property
    def ok(self) -> bool:
        """The program succeeded (for :func:`run_tests`: ran to its end and proved it)."""
        return self.status == "ok"


@dataclass(frozen=True)
class _Job:
    code: str
    stdin: str
    timeout_s: float
    memory_mb: int
    files: Mapping[str, str | bytes]
    env: Mapping[str, str]
    isolation: Isolation

    @property
    def cpu_limit(self) -> int:
        """Seconds of CPU the run may use (RLIMIT_CPU): the wall-clock limit, rounded up."""
        return max(1, math.ceil(self.timeout_s))


def run_python(
    code: str,
    *,
    stdin: str = "",
    timeout_s: float = TIMEOUT_S,
    memory_mb: int = MEMORY_MB,
    files: Mapping[str, str | bytes] | None = None,
    env: Mapping[str, str] | None = None,
    isolation: str = "auto",
) -> RunResult:
    """Run ``code`` as ``main.py`` in a fresh sandbox (``files`` beside it); ``ok`` means it exited with 0."""
    return _execute(_job(code, stdin, timeout_s, memory_mb, files, env, isolation), tests=False)


def run_tests(
    program: str,
    *,
    stdin: str = "",
    timeout_s: float = TIMEOUT_S,
    memory_mb: int = MEMORY_MB,
    files: Mapping[str, str | bytes] | None = None,
    env: Mapping[str, str] | None = None,
    isolation: str = "auto",
) -> RunResult:
    """Run a test program; ``ok`` only if it ran to its last line, exited with 0 and proved it.

    The proof is a random nonce that the harness puts in a pipe before the start. The bootstrap reads it only
    after the whole program has returned normally in the original process, with ``builtins`` unchanged,
    and writes it back on a second pipe; ``ok`` needs the nonce back. So ``os._exit(0)``, ``sys.exit(0)``
    (however ``sys.exit`` is patched), an exception, a signal, a killed harness, a forked child finishing in
    the parent's place, printed look-alike sentinels, replaced builtins (``AssertionError``, ``abs`` ...)
    and trace functions that skip asserts (``sys.settrace`` is blocked) all give a status other than ``ok``.
    What it cannot stop: the program shares the interpreter with the check, so code written against this
    harness could read the nonce pipe itself, and values built to fool comparisons (an ``__eq__`` that is
    always true) pass the asserts honestly.
    """
    return _execute(_job(program, stdin, timeout_s, memory_mb, files, env, isolation), tests=True)


def run_many(
    codes: Sequence[str],
    *,
    workers: int | None = None,
    tests: bool = False,
    progress: bool = False,
    stdin: str = "",
    timeout_s: float = TIMEOUT_S,
    memory_mb: int = MEMORY_MB,
    files: Mapping[str, str | bytes] | None = None,
    env: Mapping[str, str] | None = None,
    isolation: str = "auto",
) -> list[RunResult]:
    """Run many programs, ``workers`` at a time (default: the usable CPUs), results in input order.

    ``tests=True`` runs each like :func:`run_tests`; the other options apply to every run; ``progress`` shows tqdm.
    """
    if isinstance(codes, str) or not isinstance(codes, Sequence):
        raise SelfEvolveError(f"codes must be a list of program strings, got {type(codes).__name__}")
    if workers is None:
        workers = len(os.sched_getaffinity(0))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SelfEvolveError(f"workers must be a positive int, got {workers!r}; pass e.g. workers=4")
    jobs = [_job(code, stdin, timeout_s, memory_mb, files, env, isolation) for code in codes]
    from tqdm import tqdm

    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(jobs), disable=not progress, unit="program") as bar,
    ):
        futures = [pool.submit(_execute, job, tests) for job in jobs]
        for future in futures:
            future.add_done_callback(lambda _: bar.update())
        return [future.result() for future in futures]


def available_isolations() -> list[str]:
    """The tiers that work on this machine, strongest first; probed with a real run once per process."""
    return list(_working())


_lock = threading.Lock()
_detected: dict[str, Isolation] = {}


def _working() -> dict[str, Isolation]:
    with _lock:
        if not _detected:
            for candidate in candidates():
                if candidate.name not in _detected and _probe(candidate):
                    _detected[candidate.name] = candidate
        return _detected


def _probe(isolation: Isolation) -> bool:
    job = _Job(PROBE, "", 20.0, 256, {}, {}, isolation)
    result = _execute(job, tests=False)
    return result.ok and result.stdout == "ok\n"


def _job(
    code: object,
    stdin: object,
    timeout_s: object,
    memory_mb: object,
    files: object,
    env: object,
    isolation: object,
) -> _Job:
    """Check the arguments of a run; every mistake is a one-line SelfEvolveError naming the fix."""
    if not isinstance(code, str):
        raise SelfEvolveError(f"code must be a str of Python source, got {type(code).__name__}")
    if not isinstance(stdin, str):
        raise SelfEvolveError(f"stdin must be a str, got {type(stdin).__name__}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s < math.inf:
        raise SelfEvolveError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}; e.g. 10")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < MIN_MEMORY_MB:
        raise SelfEvolveError(
            f"memory_mb must be an int of at least {MIN_MEMORY_MB} (the interpreter needs that much), "
            f"got {memory_mb!r}; e.g. memory_mb=512"
        )
    for name, value in (("files", files), ("env", env)):
        if value is not None and not isinstance(value, Mapping):
            raise SelfEvolveError(f"{name} must be a dict, got {type(value).__name__}")
    files = dict(files or {})
    for name, content in files.items():
        _check_file(name, content)
    env = dict(env or {})
    if not all(isinstance(k, str) and isinstance(v, str) and k and "=" not in k for k, v in env.items()):
        raise SelfEvolveError("env must map variable names (str, no '=') to str values")
    working = _working()
    if not working:
        raise SelfEvolveError(f"no sandbox works here: {sys.executable} -I could not run a probe program")
    if isolation == "auto":
        chosen = next(iter(working.values()))
    elif isolation in working:
        chosen = working[isolation]
    else:
        raise SelfEvolveError(
            f"isolation {isolation!r} is not available here (working: {', '.join(working)}; known: "
            f"{', '.join(TIERS)}); pass isolation='auto', or install bubblewrap for 'bwrap'"
        )
    return _Job(code, stdin, float(timeout_s), memory_mb, files, env, chosen)


def _check_file(name: object, content: object) -> None:
    if not isinstance(name, str) or not name or "\0" in name:
        raise SelfEvolveError(f"files keys must be non-empty relative paths, got {name!r}")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or str(path) in (".", PROGRAM):
        raise SelfEvolveError(
            f"files key {name!r} must be a relative path inside the work directory, without '..', "
            f"and not {PROGRAM!r} (the program itself)"
        )
    if not isinstance(content, (str, bytes)):
        raise SelfEvolveError(f"files[{name!r}] must be str or bytes, got {type(content).__name__}")


def _execute(job: _Job, tests: bool) -> RunResult:
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="selfevolve-sandbox-")
    try:
        _populate(workdir, job)
        return _launch(job, workdir, secrets.token_hex(16) if tests else None, start)
    except OSError as err:
        return RunResult(
            "error",
            None,
            "",
            "",
            False,
            time.monotonic() - start,
            0.0,
            job.isolation.name,
            f"the sandbox could not run the program: {err}",
        )
    finally:
        _remove(workdir)


def _populate(workdir: str, job: _Job) -> None:
    for name, content in {**job.files, PROGRAM: job.code}.items():
        path = Path(workdir, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    if job.isolation.drop:
        uid, gid = job.isolation.drop
        for folder, _, names in os.walk(workdir):
            os.chown(folder, uid, gid)
            for name in names:
                os.chown(os.path.join(folder, name), uid, gid)


def _remove(workdir: str) -> None:
    """Delete the work directory, even where the program removed its own permissions."""
    for folder, dirs, _ in os.walk(workdir):
        for name in dirs:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                with contextlib.suppress(OSError):
                    os.chmod(path, 0o700)
    shutil.rmtree(workdir, ignore_errors=True)


def _environment(job: _Job, workdir: str, run_id: str) -> dict[str, str]:
    """Nothing inherited: a minimal PATH, the work directory as HOME and TMPDIR, UTF-8, one thread per library.

    ``PYTHONHASHSEED`` reaches only Python subprocesses; the sandboxed interpreter runs with ``-I``.
    """
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        **job.env,
    }
    env[MARKER_VAR] = run_id
    return env


def _limits(job: _Job) -> dict[str, list[int]]:
    cpu = job.cpu_limit
    memory = job.memory_mb * 1024 * 1024
    limits = {
        "RLIMIT_CPU": [cpu, cpu + 1],
        "RLIMIT_AS": [memory, memory],
        "RLIMIT_FSIZE": [MAX_FILE_BYTES, MAX_FILE_BYTES],
        "RLIMIT_NOFILE": [MAX_OPEN_FILES, MAX_OPEN_FILES],
        "RLIMIT_CORE": [0, 0],
    }
    uid = job.isolation.nproc_uid
    if uid is not None:
        tasks = MAX_TASKS + (0 if job.isolation.userns else count_tasks(uid))
        limits["RLIMIT_NPROC"] = [tasks, tasks]
    return limits


def _launch(job: _Job, workdir: str, nonce: str | None, start: float) -> RunResult:
    isolation, run_id = job.isolation, secrets.token_hex(16)
    report_r, report_w = os.pipe()
    nonce_r = None
    if nonce is not None:
        nonce_r, nonce_w = os.pipe()
        os.write(nonce_w, nonce.encode())
        os.close(nonce_w)
    config = {
        "workdir": workdir,
        "program": PROGRAM,
        "report_fd": report_w,
        "nonce_fd": nonce_r,
        "drop": isolation.drop if isolation.drop_inside else None,
        "limits": _limits(job),
        "guard": isolation.guard,
        "allow_fork": isolation.allow_fork,
    }
    argv = [*isolation.command(workdir), sys.executable, "-I", "-B", "-X", "utf8", BOOTSTRAP]
    drop = {}
    if isolation.drop and not isolation.drop_inside:
        drop = {"user": isolation.drop[0], "group": isolation.drop[1], "extra_groups": []}
    stdin = _stdin(job.stdin)
    try:
        proc = subprocess.Popen(
            [*argv, json.dumps(config)],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=_environment(job, workdir, run_id),
            start_new_session=True,
            pass_fds=[fd for fd in (report_w, nonce_r) if fd is not None],
            **drop,
        )
    except BaseException:
        os.close(report_r)
        raise
    finally:
        for fd in (report_w, nonce_r, stdin):
            if fd is not None and fd >= 0:
                os.close(fd)
    out, err, report = _Capture(), _Capture(), _Capture()
    streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, report_r: report}
    timed_out = True
    try:
        timed_out = _collect(proc.pid, streams, start + job.timeout_s)
    finally:
        returncode, cpu_s = _end(proc, isolation, run_id)
        _collect(None, streams, time.monotonic() + DRAIN_S)
        proc.stdout.close()
        proc.stderr.close()
        os.close(report_r)
    events = _events(report)
    cpu_s = max([cpu_s, *(e["cpu"] for e in events.values() if isinstance(e.get("cpu"), (int, float)))])
    status, exit_code, detail = _classify(job, returncode, timed_out, cpu_s, events, nonce)
    return RunResult(
        status,
        exit_code,
        out.text(),
        err.text(),
        out.truncated or err.truncated,
        time.monotonic() - start,
        cpu_s,
        isolation.name,
        detail,
    )


def _stdin(text: str) -> int:
    """A read-only fd holding ``text`` (an unlinked temporary file), or /dev/null when it is empty."""
    if not text:
        return subprocess.DEVNULL
    with tempfile.TemporaryFile() as handle:
        handle.write(text.encode())
        handle.seek(0)
        return os.dup(handle.fileno())


@dataclass
class _Capture:
    """The first and the last bytes of a stream, and how many were dropped in between."""

    head: bytearray = field(default_factory=bytearray)
    tail: bytearray = field(default_factory=bytearray)
    dropped: int = 0

    def add(self, chunk: bytes) -> None:
        room = OUTPUT_LIMIT * 3 // 4 - len(self.head)
        self.head += chunk[:room]
        self.tail += chunk[max(room, 0) :]
        excess = len(self.tail) - OUTPUT_LIMIT // 4
        if excess > 0:
            del self.tail[:excess]
            self.dropped += excess

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    def text(self) -> str:
        cut = f"\n[... {self.dropped} bytes cut ...]\n".encode() if self.dropped else b""
        return bytes(self.head + cut + self.tail).decode(errors="replace")


def _collect(pid: int | None, streams: dict[int, _Capture], deadline: float) -> bool:
    """Read the pipes until process ``pid`` exits (or, with None, until they close); True if time ran out."""
    selector = selectors.DefaultSelector()
    for fd in streams:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    pidfd = _pidfd(pid)
    if pidfd is not None:
        selector.register(pidfd, selectors.EVENT_READ)
    try:
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            wait = remaining if pidfd is not None or pid is None else min(remaining, 0.01)
            for key, _ in selector.select(wait):
                if key.fd == pidfd:
                    return False
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if chunk:
                    streams[key.fd].add(chunk)
                else:
                    selector.unregister(key.fd)
            if pid is not None and pidfd is None and _exited(pid):
                return False
        return False
    finally:
        selector.close()
        if pidfd is not None:
            os.close(pidfd)


def _pidfd(pid: int | None) -> int | None:
    if pid is None or not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _exited(pid: int) -> bool:
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _end(proc: subprocess.Popen, isolation: Isolation, run_id: str) -> tuple[int, float]:
    """Kill everything the run left, reap the main process; its return code and CPU seconds."""
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)  # the leader is not reaped yet, so its group id is still ours
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if isolation.guard:
        kill_marked(run_id)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def _events(report: _Capture) -> dict[str, dict]:
    events = {}
    for line in report.text().splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and isinstance(message.get("event"), str):
            events.setdefault(message["event"], message)
    return events


def _classify(
    job: _Job, returncode: int, timed_out: bool, cpu_s: float, events: dict[str, dict], nonce: str | None
) -> tuple[str, int | None, str]:
    """(status, exit_code, detail) from how the process ended and what the bootstrap reported."""
    if timed_out:
        return "timeout", None, f"wall-clock limit of {job.timeout_s:g} s reached"
    signum = -returncode if returncode < 0 else None
    if job.isolation.name == "bwrap" and returncode > 128 and not events:
        signum = returncode - 128  # bubblewrap exits with 128 + the signal that killed the program
    if signum is not None:
        cpu_limit = job.cpu_limit
        if signum == signal.SIGXCPU or (signum == signal.SIGKILL and cpu_s >= cpu_limit):
            return "timeout", None, f"CPU limit of {cpu_limit} s reached"
        return "killed", None, f"killed by {_signal_name(signum)}"
    exception = events.get("exception", {}).get("type")
    if exception == "MemoryError":
        return "memory", returncode, f"MemoryError (memory limit {job.memory_mb} MB)"
    if returncode != 0:
        return "failed", returncode, f"exit status {returncode}" + (f" ({exception})" if exception else "")
    if nonce is None:
        return "ok", 0, ""
    end = events.get("end")
    if end is None:
        return "failed", 0, "exit status 0 before the end of the program (no completion proof)"
    if end.get("builtins_changed"):
        return "failed", 0, "the program replaced builtins: " + ", ".join(map(str, end["builtins_changed"]))
    if end.get("proof") != nonce:
        return "failed", 0, "wrong completion proof"
    return "ok", 0, ""


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
