"""The protection tiers a sandboxed program can run under, strongest first, and the process bookkeeping they need.

``bwrap``
    bubblewrap: own pid, network, ipc and uts namespaces; the host filesystem read-only, an empty read-only
    ``/tmp`` and private ``/dev/shm``; only the work directory is writable; everything in the pid namespace
    dies with the run (and with the harness, ``--die-with-parent``). As root the program drops to uid 65534
    so that ``RLIMIT_NPROC`` applies; directories that uid cannot enter are replaced by a tmpfs holding only
    the interpreter's own paths (so ``/root`` is hidden). No guard runs in the program's process.
``netns``
    ``unshare --net``: a network namespace with nothing in it, plus the ``process`` guards below.
``process``
    No kernel isolation beyond resource limits and a fresh session: audit hooks inside the interpreter resolve
    every path (``..``, symlinks, ``dir_fd``) and block writes outside the work directory, reading other
    processes' ``/proc`` entries, sockets, starting programs (exec, ``subprocess``), native code (``ctypes``)
    and signals to processes outside the run; leftovers are
    found by a marker in their environment and killed. Audit hooks are not a security boundary: they stop
    ordinary and careless code, not code written to escape this harness. When the harness runs as root and
    uid 65534 cannot use the interpreter, the program stays root, so ``fork`` is blocked too
    (``RLIMIT_NPROC`` does not apply to root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import sys
import time
from dataclasses import dataclass

TIERS = ("bwrap", "netns", "process")
NOBODY = (65534, 65534)
MARKER_VAR = "SELFEVOLVE_SANDBOX_RUN"


@dataclass(frozen=True)
class Isolation:
    """One way to launch the sandboxed interpreter.

    ``prefix`` is the launcher command (bubblewrap's per-run arguments come from :meth:`command`); ``drop`` the
    uid and gid the program runs as (root harness only), dropped by the bootstrap when ``drop_inside`` (bubblewrap
    must mount as root) else by Popen; ``userns`` means RLIMIT_NPROC counts only the run's own tasks; ``guard``
    installs the in-process audit hooks.
    """

    name: str
    prefix: tuple[str, ...] = ()
    drop: tuple[int, int] | None = None
    drop_inside: bool = False
    userns: bool = False
    guard: bool = True
    allow_fork: bool = True

    def command(self, workdir: str) -> list[str]:
        """The launcher arguments that go before the interpreter for a run in ``workdir``."""
        if self.name != "bwrap":
            return list(self.prefix)
        return [*self.prefix, "--bind", workdir, workdir, "--remount-ro", "/tmp", "--chdir", workdir]

    @property
    def nproc_uid(self) -> int | None:
        """The uid whose task count RLIMIT_NPROC checks, or None where the kernel ignores the limit (root)."""
        uid = self.drop[0] if self.drop else os.getuid()
        return None if uid == 0 and not self.userns else uid


def candidates() -> list[Isolation]:
    """Every launch variant worth probing on this machine, strongest first (several per tier as root)."""
    root = os.getuid() == 0
    found = []
    bwrap = shutil.which("bwrap")
    if bwrap:
        common = (bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts")
        common += ("--unshare-cgroup-try", "--die-with-parent", "--new-session", "--ro-bind", "/", "/")
        common += ("--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/dev/shm")
        common += ("--tmpfs", "/tmp", *_tmp_binds())
        if root:
            found.append(
                Isolation("bwrap", (*common, *_reveal(_interpreter_paths())), NOBODY, True, guard=False)
            )
        else:
            found.append(
                Isolation("bwrap", (common[0], "--unshare-user", *common[1:]), userns=True, guard=False)
            )
    unshare = shutil.which("unshare")
    if unshare:
        if root:
            found.append(Isolation("netns", (unshare, "--net", "--map-root-user"), NOBODY, userns=True))
            found.append(Isolation("netns", (unshare, "--net"), allow_fork=False))
        else:
            found.append(Isolation("netns", (unshare, "--net", "--map-root-user"), userns=True))
    if root:
        found.append(Isolation("process", drop=NOBODY))
        found.append(Isolation("process", allow_fork=False))
    else:
        found.append(Isolation("process"))
    return found


def _interpreter_paths() -> list[str]:
    """What the interpreter reads: its prefixes, the real executable's folder and the import path."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(p for p in sys.path if p and os.path.isdir(p))
    return sorted(os.path.realpath(p) for p in paths)


def _outermost(paths: list[str]) -> list[str]:
    """``paths`` without those inside another of them (binding the outer one covers them)."""
    return [p for p in paths if not any(p.startswith(q + "/") for q in paths)]


def _tmp_binds() -> list[str]:
    """Read-only binds of the interpreter's and this package's paths that lie under ``/tmp``, which the
    sandbox's empty ``/tmp`` would otherwise hide (a checkout or virtualenv in ``/tmp``, as on CI runners)."""
    tmp = os.path.realpath("/tmp")
    paths = {*_interpreter_paths(), os.path.realpath(os.path.dirname(__file__))}
    inside = _outermost(sorted(p for p in paths if p.startswith(tmp + "/")))
    return [arg for path in inside for arg in ("--ro-bind", path, path)]


def _reveal(paths: list[str]) -> list[str]:
    """bubblewrap arguments that let uid 65534 reach ``paths`` when an ancestor is closed to others.

    The closed ancestor is covered by an empty read-only tmpfs into which only the needed paths are bound,
    so the rest of it (``/root``, say) stays hidden.
    """
    args: list[str] = []
    hidden: set[str] = set()
    made: set[str] = set()
    for path in _outermost(paths):
        closed = next((a for a in _ancestors(path) if not os.stat(a).st_mode & stat.S_IXOTH), None)
        if closed is None:
            continue
        if closed not in hidden:
            hidden.add(closed)
            args += ["--tmpfs", closed]
        for parent in _ancestors(path):
            if len(parent) > len(closed) and parent not in made:
                made.add(parent)
                args += ["--perms", "0755", "--dir", parent]
        args += ["--ro-bind", path, path]
    for closed in sorted(hidden):
        args += ["--remount-ro", closed]
    return args


def _ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``['/a', '/a/b']`` (the path itself excluded)."""
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def count_tasks(uid: int) -> int:
    """Tasks (threads included, as RLIMIT_NPROC counts them) of uid ``uid`` on this machine.

    The owner of ``/proc/PID`` is the effective uid, which RLIMIT_NPROC's real uid matches for our children.
    """
    total = 0
    for entry in os.scandir("/proc"):
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                with open(f"/proc/{entry.name}/stat", "rb") as handle:
                    total += int(handle.read().rsplit(b")", 1)[1].split()[17])
        except (OSError, IndexError, ValueError):
            continue
    return total


def kill_marked(run_id: str, rounds: int = 100) -> int:
    """SIGKILL every process whose environment carries this run's marker, until none is left; how many."""
    needle = f"{MARKER_VAR}={run_id}\0".encode()
    killed: set[int] = set()
    for _ in range(rounds):
        pids = [pid for pid in _pids() if needle in _environ(pid)]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.005)
    return len(killed)


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != os.getpid()]


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return handle.read()
    except OSError:
        return b""
