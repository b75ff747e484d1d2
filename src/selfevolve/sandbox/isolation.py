"""The protection tiers a sandboxed program can run under, strongest first, the part of the host it may see, and
the process bookkeeping they need.

Every tier runs the base interpreter (never a virtualenv's) with ``-I -S``: no site-packages on ``sys.path``.
What a program may read is its :class:`View`: the system directories, the interpreter, its standard library
(site-packages inside it hidden) and its work directory; never the harness's virtualenv, checkout, data or home.

``bwrap``
    bubblewrap: own pid, network, ipc and uts namespaces; a read-only empty root holding only the view (each
    site-packages inside it covered by an empty read-only tmpfs), a fresh ``/dev`` and ``/proc``, an empty
    read-only ``/tmp`` and a private ``/dev/shm``; only the work directory is writable; everything in the pid
    namespace dies with the run (and with the harness, ``--die-with-parent``). As root the program drops to uid
    65534 so that ``RLIMIT_NPROC`` applies. No guard runs in the program's process.
``netns``
    ``unshare --net``: a network namespace with nothing in it, plus the ``process`` guards below.
``process``
    No kernel isolation beyond resource limits and a fresh session: audit hooks inside the interpreter resolve
    every path (``..``, symlinks, ``dir_fd``), refuse opening or listing what exists outside the view (native
    code that opens files itself, such as ``sqlite3``, is not covered) and block writes outside the work
    directory, reading other processes' ``/proc`` entries, sockets, starting programs (exec, ``subprocess``),
    native code (``ctypes``) and signals to processes outside the run; leftovers are found by a marker in their
    environment and killed. Audit hooks are not a security boundary: they stop ordinary and careless code, not
    code written to escape this harness. When the harness runs as root and uid 65534 cannot use the
    interpreter, the program stays root, so ``fork`` is blocked too (``RLIMIT_NPROC`` does not apply to root).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import shutil
import signal
import site
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

TIERS = ("bwrap", "netns", "process")
NOBODY = (65534, 65534)
MARKER_VAR = "SELFEVOLVE_SANDBOX_RUN"
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
LOADER_CACHE = "/etc/ld.so.cache"  # how the dynamic loader finds libraries outside its default folders
# Devices a guarded tier lets a program open: those bubblewrap's fresh /dev has (not the host's disks, say).
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/shm")
FRESH = ("--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/dev/shm", "--tmpfs", "/tmp")
SITE_GLOBS = ("/usr/lib/python3*/*-packages", "/usr/local/lib/python3*/*-packages")


@dataclass(frozen=True)
class View:
    """What a sandboxed program may read besides its work directory, as real paths.

    ``interpreter`` is the base interpreter's executable; ``shown`` the system directories, the interpreter,
    its standard library, ``lib-dynload``, ``libpython`` and the loader cache; ``hidden`` the site-packages (and
    the harness's virtualenv, checkout and home) that lie inside a shown path and are covered up there.
    """

    interpreter: str
    shown: tuple[str, ...]
    hidden: tuple[str, ...]

    def bwrap_args(self) -> list[str]:
        """bubblewrap arguments that build the view in an empty root (merged-/usr symlinks kept as symlinks);
        ``/tmp`` becomes a tmpfs before anything is bound under it."""
        args = []
        system = [d for d in SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)]
        for folder in SYSTEM_DIRS:
            if os.path.islink(folder) and _within(os.path.realpath(folder), system):
                args += ["--symlink", os.readlink(folder), folder]
            elif os.path.isdir(folder):
                args += ["--ro-bind", folder, folder]
        binds = [path for path in self.shown if not _within(path, system)]
        args += [*FRESH, *_parents(*binds)]
        for path in binds:
            args += ["--ro-bind", path, path]
        for path in self.hidden:
            args += ["--tmpfs", path, "--remount-ro", path]
        return args

    def config(self) -> dict[str, list[str]]:
        """The view as the bootstrap's guard takes it: with bubblewrap's ``/proc`` and devices."""
        return {"shown": ["/proc", *DEVICES, *self.shown], "hidden": list(self.hidden)}


@functools.cache
def view() -> View:
    """This harness's view, computed once per process."""
    interpreter = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    if not os.access(interpreter, os.X_OK):
        interpreter = os.path.realpath(sys.executable)
    prefixes = {"base": sys.base_prefix, "installed_base": sys.base_prefix}
    prefixes.update(platbase=sys.base_exec_prefix, installed_platbase=sys.base_exec_prefix)
    paths = sysconfig.get_paths(vars=prefixes)  # the base install's, also when this is a virtualenv
    stdlib_zip = f"python{sys.version_info[0]}{sys.version_info[1]}.zip"
    needed = [*SYSTEM_DIRS, LOADER_CACHE, interpreter, paths["stdlib"], paths["platstdlib"], *_libpython()]
    needed += [p for p in sys.path if os.path.basename(p) in ("lib-dynload", stdlib_zip)]
    shown = _outermost(sorted({os.path.realpath(p) for p in needed if os.path.exists(p)}))
    private = [*site.getsitepackages([sys.base_prefix, sys.base_exec_prefix]), *site.getsitepackages()]
    private += [site.getusersitepackages(), paths["purelib"], paths["platlib"], sys.prefix]
    private += [_checkout(), os.path.expanduser("~"), *(p for g in SITE_GLOBS for p in glob.glob(g))]
    hidden = {os.path.realpath(p) for p in private if os.path.isdir(p)}
    hidden = {h for h in hidden if _within(h, shown) and not any(_within(s, [h]) for s in shown)}
    return View(interpreter, tuple(shown), tuple(_outermost(sorted(hidden))))


def _libpython() -> list[str]:
    """The shared ``libpython`` this interpreter loaded, if any (as its memory map names it)."""
    with open("/proc/self/maps") as maps:
        found = {line.split(None, 5)[-1].strip() for line in maps if "/libpython" in line}
    return sorted(p for p in found if p.startswith("/"))


def _checkout() -> str:
    """The folder this package was loaded from: a checkout's root for a ``src`` layout."""
    package = Path(__file__).resolve().parents[2]
    return str(package.parent if package.name == "src" else package)


def _parents(*paths: str) -> list[str]:
    """bubblewrap arguments that make the folders above ``paths`` in the sandbox's root open to every uid (those
    it makes for a bind are 0700, closed to uid 65534); folders inside system directories are left alone."""
    system = [os.path.realpath(d) for d in SYSTEM_DIRS]
    folders = sorted({a for path in paths for a in _ancestors(path) if not _within(a, system)})
    return [arg for folder in folders for arg in ("--perms", "0755", "--dir", folder)]


def _ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``['/a', '/a/b']`` (the path itself excluded)."""
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def _within(path: str, roots: list[str] | tuple[str, ...]) -> bool:
    """``path`` is one of ``roots`` or lies inside one."""
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _outermost(paths: list[str]) -> list[str]:
    """``paths`` without those inside another of them."""
    return [p for p in paths if not any(p != q and _within(p, [q]) for q in paths)]


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
        tail = ["--bind", workdir, workdir, "--remount-ro", "/tmp", "--remount-ro", "/", "--chdir", workdir]
        return [*self.prefix, *_parents(workdir), *tail]

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
        common = ("--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try")
        common += ("--die-with-parent", "--new-session", *view().bwrap_args())
        if root:
            found.append(Isolation("bwrap", (bwrap, *common), NOBODY, True, guard=False))
        else:
            found.append(Isolation("bwrap", (bwrap, "--unshare-user", *common), userns=True, guard=False))
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
