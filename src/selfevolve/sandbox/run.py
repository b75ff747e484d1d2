"""Run untrusted Python: :func:`run_python` (one program), :func:`run_tests` (a program judged by trusted tests
from outside its process), :func:`run_remote` (a program whose functions trusted code calls) and
:func:`run_many` (a thread pool of the first two).

Every run gets a fresh temporary work directory (its ``HOME`` and ``TMPDIR``, removed afterwards), a scrubbed
environment, the base interpreter with ``-I -S`` (no site-packages, no ``PYTHON*`` variables, no script folder
on ``sys.path``), its own session, and resource limits set inside the child: CPU seconds, address space, tasks
(``RLIMIT_NPROC``), file size, open files, no core files. When the program ends or runs out of time, its whole process group is killed,
then whatever escaped the group (see :mod:`selfevolve.sandbox.isolation` for how per tier).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import marshal
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TypeVar

from selfevolve.errors import SelfEvolveError
from selfevolve.sandbox import wire
from selfevolve.sandbox.isolation import (
    MARKER_VAR,
    TIERS,
    Isolation,
    candidates,
    count_tasks,
    kill_marked,
    view,
)
from selfevolve.sandbox.remote import MAX_REPLY, Remote, Stopped, Tests, compiled, judge

T = TypeVar("T")

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
WIRE = str(Path(__file__).with_name("wire.py"))
# Runs the bootstrap from its code object, compiled once per harness process (compiling it costs each run ~5 ms).
START = "import marshal, sys; exec(marshal.loads(bytes.fromhex(sys.argv[1])))"
READY = wire.dumps({"ready": True}).rstrip(b"\n")  # the served program's first line
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
        """The program succeeded (for :func:`run_tests`: the trusted tests ran to their end)."""
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
    """Run ``code`` as ``main.py`` in a fresh sandbox (``files`` beside it); ``ok`` means it exited with 0.

    The exit status is the program's to choose: use :func:`run_tests` when the run is a verdict.
    """
    return _execute(_job(code, stdin, timeout_s, memory_mb, files, env, isolation))[0]


def run_tests(
    program: str,
    tests: Tests,
    *,
    stdin: str = "",
    timeout_s: float = TIMEOUT_S,
    memory_mb: int = MEMORY_MB,
    files: Mapping[str, str | bytes] | None = None,
    env: Mapping[str, str] | None = None,
    isolation: str = "auto",
) -> RunResult:
    """Judge ``program`` with trusted ``tests`` that run outside its process; ``ok`` iff the tests ran to their end.

    The program runs in the sandbox as usual; ``tests`` run in this interpreter, and each call of one of
    ``tests.functions`` is sent to the program as plain data and answered with plain data (anything else, an
    exception, its end, or the time limit fails the call). So nothing the program does to its own process (its
    exit status, ``os._exit``, output, patched builtins or trace functions, forged messages) changes the verdict;
    see :mod:`selfevolve.sandbox` for the whole threat model. ``wall_s`` covers both sides, the limit applies to
    both (test code that loops on its own between calls is not interrupted).
    """
    _check_tests(tests)
    return _judged(_job(program, stdin, timeout_s, memory_mb, files, env, isolation), tests)


def run_remote(
    program: str,
    driver: Callable[[Remote], T],
    *,
    describe: str | None = None,
    stdin: str = "",
    timeout_s: float = TIMEOUT_S,
    memory_mb: int = MEMORY_MB,
    files: Mapping[str, str | bytes] | None = None,
    env: Mapping[str, str] | None = None,
    isolation: str = "auto",
) -> tuple[RunResult, T | None]:
    """Run ``program`` in the sandbox, then ``driver(remote)`` here, calling its functions through ``remote``.

    Returns how the program ended (``status`` "timeout" when the limit stopped a call) and what the driver
    returned, or None when the program never became ready (it failed to load, or ran out of time) or the driver
    let :class:`~selfevolve.sandbox.remote.Stopped` through. ``describe`` names a function of the program that
    writes a value which is not plain data as text; its answers then decode to display-only stand-ins.
    """
    job = _job(program, stdin, timeout_s, memory_mb, files, env, isolation)
    if describe is not None and not (isinstance(describe, str) and describe.isidentifier()):
        raise SelfEvolveError(f"describe must name a function of the program, got {describe!r}")
    return _execute(job, driver, describe)


def run_many(
    codes: Sequence[str],
    *,
    tests: Sequence[Tests] | None = None,
    workers: int | None = None,
    progress: bool = False,
    stdin: str = "",
    timeout_s: float = TIMEOUT_S,
    memory_mb: int = MEMORY_MB,
    files: Mapping[str, str | bytes] | None = None,
    env: Mapping[str, str] | None = None,
    isolation: str = "auto",
) -> list[RunResult]:
    """Run many programs, ``workers`` at a time (default: the usable CPUs), results in input order.

    With ``tests`` (one per program) each is judged like :func:`run_tests`, else run like :func:`run_python`;
    the other options apply to every run; ``progress`` shows tqdm.
    """
    if isinstance(codes, str) or not isinstance(codes, Sequence):
        raise SelfEvolveError(f"codes must be a list of program strings, got {type(codes).__name__}")
    if tests is not None:
        if isinstance(tests, Tests) or not isinstance(tests, Sequence) or len(tests) != len(codes):
            raise SelfEvolveError("tests must be a list with one Tests per program, or None")
        for item in tests:
            _check_tests(item)
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
        if tests is None:
            futures = [pool.submit(lambda job: _execute(job)[0], job) for job in jobs]
        else:
            futures = [pool.submit(_judged, job, item) for job, item in zip(jobs, tests)]
        for future in futures:
            future.add_done_callback(lambda _: bar.update())
        return [future.result() for future in futures]


def available_isolations() -> list[str]:
    """The tiers that work on this machine, strongest first; probed with a real run once per process."""
    return list(_working())


def isolation_warning() -> str | None:
    """What to tell the user when bubblewrap, the only tier that is a boundary, does not work here; else None.

    The first run of a process also logs it (a warning of the ``selfevolve.sandbox.run`` logger).
    """
    return _weakness(_working())


def _weakness(working: dict[str, Isolation]) -> str | None:
    if "bwrap" in working:
        return None
    return (
        f"bubblewrap is missing or does not work here, so sandboxed programs run in the "
        f"{next(iter(working), 'no')!r} tier, whose in-process guards stop careless code, not code written to "
        "escape them: that is not a security boundary; install bubblewrap (apt-get install bubblewrap)"
    )


_lock = threading.Lock()
_detected: dict[str, Isolation] = {}


def _working() -> dict[str, Isolation]:
    with _lock:
        if not _detected:
            for candidate in candidates():
                if candidate.name not in _detected and _probe(candidate):
                    _detected[candidate.name] = candidate
            weakness = _weakness(_detected)
            if weakness:
                logging.getLogger(__name__).warning(weakness)
        return _detected


def _probe(isolation: Isolation) -> bool:
    result = _execute(_Job(PROBE, "", 20.0, 256, {}, {}, isolation))[0]
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
        raise SelfEvolveError(f"no sandbox works here: {view().interpreter} -I could not run a probe program")
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


def _check_tests(tests: object) -> None:
    """Trusted tests must be a :class:`Tests` whose code compiles; mistakes are one-line SelfEvolveErrors."""
    if not isinstance(tests, Tests):
        raise SelfEvolveError(f"tests must be a selfevolve.sandbox.Tests, got {type(tests).__name__}")
    names = tests.functions
    if isinstance(names, str) or not all(isinstance(n, str) and n.isidentifier() for n in names):
        raise SelfEvolveError(f"Tests.functions must be a tuple of function names, got {names!r}")
    for source, field_name, name in ((tests.setup, "setup", "<setup>"), (tests.code, "code", "<tests>")):
        if not isinstance(source, str):
            raise SelfEvolveError(f"Tests.{field_name} must be a str of Python, got {type(source).__name__}")
        try:
            compiled(source, name)
        except (SyntaxError, ValueError) as err:
            raise SelfEvolveError(
                f"Tests.{field_name} is not valid Python ({err}); fix the test code"
            ) from None


def _judged(job: _Job, tests: Tests) -> RunResult:
    """:func:`run_tests` on a checked job: the verdict is the judge's; the process only explains a failure."""
    result, verdict = _execute(job, functools.partial(judge, tests))
    if verdict is not None:
        return dataclasses.replace(result, status=verdict[0], detail=verdict[1])
    if result.status == "ok":  # it exited with 0 before the tests were done: os._exit(0), say
        detail = f"the program ended (exit status {result.exit_code}) before the tests finished"
        return dataclasses.replace(result, status="failed", detail=detail)
    return result


def _execute(
    job: _Job, driver: Callable[[Remote], T] | None = None, describe: str | None = None
) -> tuple[RunResult, T | None]:
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="selfevolve-sandbox-")
    try:
        _populate(workdir, job)
        return _launch(job, workdir, start, driver, describe)
    except OSError as err:
        detail = f"the sandbox could not run the program: {err}"
        elapsed = time.monotonic() - start
        return RunResult("error", None, "", "", False, elapsed, 0.0, job.isolation.name, detail), None
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


def _launch(
    job: _Job, workdir: str, start: float, driver: Callable[[Remote], T] | None, describe: str | None
) -> tuple[RunResult, T | None]:
    isolation, run_id = job.isolation, secrets.token_hex(16)
    report_r, report_w = os.pipe()
    ours, theirs = [report_r], [report_w]
    if driver is not None:  # requests go to the program, replies come back
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        ours, theirs = [*ours, request_w, reply_r], [*theirs, request_r, reply_w]
    config = {
        "workdir": workdir,
        "program": PROGRAM,
        "report_fd": report_w,
        "request_fd": theirs[1] if driver else None,
        "reply_fd": theirs[2] if driver else None,
        "wire": _compiled_hex(WIRE) if driver else None,
        "describe": describe,
        "drop": isolation.drop if isolation.drop_inside else None,
        "limits": _limits(job),
        "guard": isolation.guard,
        "view": view().config() if isolation.guard else None,
        "allow_fork": isolation.allow_fork,
    }
    argv = [*isolation.command(workdir), view().interpreter, "-I", "-S", "-B", "-X", "utf8", "-c", START]
    argv.append(_compiled_hex(BOOTSTRAP))
    drop = {}
    if isolation.drop and not isolation.drop_inside:
        drop = {"user": isolation.drop[0], "group": isolation.drop[1], "extra_groups": []}
    stdin = _stdin(job.stdin)
    try:
        proc = subprocess.Popen(
            [*argv, marshal.dumps(config).hex()],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=_environment(job, workdir, run_id),
            start_new_session=True,
            pass_fds=theirs,
            **drop,
        )
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in (*theirs, stdin):
            if fd >= 0:
                os.close(fd)
    out, err, report = _Capture(), _Capture(), _Capture()
    outputs = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, report_r: report}
    session = _Session(proc.pid, outputs, (ours[1], ours[2]) if driver else None)
    deadline = start + job.timeout_s
    value = None
    try:
        if driver is None:
            session.timed_out = not session.wait_exit(deadline)
        else:
            value = session.serve(deadline, driver, describe is not None)
    finally:
        returncode, cpu_s = _end(proc, isolation, run_id)
        session.drain(time.monotonic() + DRAIN_S)
        session.close()
        proc.stdout.close()
        proc.stderr.close()
        os.close(report_r)
    events = _events(report)
    cpu_s = max([cpu_s, *(e["cpu"] for e in events.values() if isinstance(e.get("cpu"), (int, float)))])
    if session.finished:  # the driver is done, so the harness stopped the program
        status, exit_code, detail = "ok", None, "stopped by the harness after the last call"
    else:
        status, exit_code, detail = _classify(job, returncode, session.timed_out, cpu_s, events)
    result = RunResult(
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
    return result, value


@functools.cache
def _compiled_hex(path: str) -> str:
    """The marshalled code of a file of this package, as hex for the sandboxed interpreter's command line."""
    return marshal.dumps(compile(Path(path).read_bytes(), path, "exec")).hex()


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


class _Session:
    """The pipes of one launched program: its output is captured while the harness waits for it to end or,
    in a served run, writes requests and waits for reply lines."""

    def __init__(self, pid: int, outputs: dict[int, _Capture], channel: tuple[int, int] | None) -> None:
        """``channel``: the harness's ends of a served run's request and reply pipes, which it then owns."""
        self.pid, self.outputs = pid, outputs
        self.selector = selectors.DefaultSelector()
        for fd in outputs:
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ)
        self.pidfd = _pidfd(pid)
        if self.pidfd is not None:
            self.selector.register(self.pidfd, selectors.EVENT_READ)
        self.exited = self.timed_out = self.finished = False
        self.request, self.reply = channel or (None, None)
        self.deadline = math.inf
        self.outgoing, self.incoming = bytearray(), bytearray()

    def wait_exit(self, deadline: float) -> bool:
        """Capture output until the program exits (True) or ``deadline`` passes (False)."""
        while not self.exited:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._step(remaining)
        return True

    def drain(self, deadline: float) -> None:
        """Once every process of the run is dead: read the output pipes until they close or ``deadline``."""
        if self.pidfd is not None:
            self.selector.unregister(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None
        self.exited = True
        while self.outputs.keys() & self._registered():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._step(remaining)

    def serve(self, deadline: float, driver: Callable[[Remote], T], opaque: bool) -> T | None:
        """Wait for the program to be ready and run ``driver`` on it (the caller then stops the program).

        None when it never became ready or the driver let :class:`Stopped` through.
        """
        self.deadline = deadline
        for fd in (self.request, self.reply):
            os.set_blocking(fd, False)
        self.selector.register(self.reply, selectors.EVENT_READ)
        value = None
        try:
            if self.exchange(b"") == READY:
                value = driver(Remote(self.exchange, opaque))
                self.finished = True
        except Stopped:
            if self.exited or self.reply not in self._registered():  # it ended: let its exit status say how
                self.wait_exit(min(deadline, time.monotonic() + DRAIN_S))
        return value

    def exchange(self, request: bytes) -> bytes:
        """Send ``request`` and return the next reply line; :class:`Stopped` when none can come in time."""
        if request and self.request is None:
            raise Stopped("the program stopped reading requests")
        self.outgoing += request
        while True:
            end = self.incoming.find(b"\n")
            if end >= 0:
                line = bytes(self.incoming[:end])
                del self.incoming[: end + 1]
                return line
            if len(self.incoming) > MAX_REPLY:
                raise Stopped(f"an answer longer than {MAX_REPLY} bytes")
            if self.reply not in self._registered():
                raise Stopped("the program ended")
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                self.timed_out = True
                raise Stopped("out of time", timeout=True)
            self._step(0 if self.exited else remaining)

    def _registered(self) -> set[int]:
        return set(self.selector.get_map())

    def _step(self, wait: float) -> None:
        """One round: write pending requests, read what the pipes hold, notice the exit. Once the program has
        exited, a round that reads nothing from the reply pipe stops reading it (a leftover may hold it open)."""
        if self.outgoing and self.request is not None and self.request not in self._registered():
            self.selector.register(self.request, selectors.EVENT_WRITE)
        polling = self.pidfd is None and not self.exited
        exited, received = self.exited, len(self.incoming)
        for key, _ in self.selector.select(min(wait, 0.01) if polling else wait):
            if key.fd == self.pidfd:
                self.exited = True
            elif key.fd == self.request:
                self._write()
            else:
                self._read(key.fd)
        if polling and _exited(self.pid):
            self.exited = True
        if exited and len(self.incoming) == received:
            self._unregister(self.reply)

    def _write(self) -> None:
        try:
            written = os.write(self.request, self.outgoing[:65536])
        except BlockingIOError:
            return
        except OSError:  # the program closed its end
            self._close_requests()
            return
        del self.outgoing[:written]
        if not self.outgoing:
            self.selector.unregister(self.request)

    def _read(self, fd: int) -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self._unregister(fd)
        elif fd == self.reply:
            self.incoming += chunk
        else:
            self.outputs[fd].add(chunk)

    def _unregister(self, fd: int | None) -> None:
        if fd in self._registered():
            self.selector.unregister(fd)

    def _close_requests(self) -> None:
        """End the requests: the program's request pipe reads end of file."""
        if self.request is not None:
            self._unregister(self.request)
            os.close(self.request)
            self.request = None
            self.outgoing.clear()

    def close(self) -> None:
        """Close the harness's ends of the call channel and the pidfd (the caller closes the output pipes)."""
        self._close_requests()
        self.selector.close()
        for fd in (self.pidfd, self.reply):
            if fd is not None:
                os.close(fd)


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
    job: _Job, returncode: int, timed_out: bool, cpu_s: float, events: dict[str, dict]
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
    return "ok", 0, ""


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
