"""The code that runs first inside the sandbox: ``python -I _bootstrap.py <config json>``.

It runs as a script, never imported by selfevolve, so it uses the standard library only. In order it
drops to the sandbox uid (bubblewrap as root), sets the resource limits, installs the audit-hook guards (tiers
without namespaces, and every test run), runs the program as ``__main__`` and tells the harness on the report
pipe how the program ended. For test runs the completion proof (the nonce) is read from its pipe only after the
program has returned normally; see :func:`selfevolve.sandbox.run_tests` for what that does and does not prove.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import json
import os
import resource
import sys
import types

_read, _write, _getpid, _dumps = os.read, os.write, os.getpid, json.dumps

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# Audit events that change a path, and which of their arguments are paths.
PATH_EVENTS = {
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.rename": (0, 1),
    "os.mkdir": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.link": (0, 1),
    "os.symlink": (1,),
    "os.truncate": (0,),
    "os.utime": (0,),
    "os.setxattr": (0,),
    "os.removexattr": (0,),
    "shutil.rmtree": (0,),
}
# Starting programs (nothing could contain them), calling native code, and every kind of network use.
BLOCKED = frozenset(
    (
        "os.exec",
        "os.posix_spawn",
        "os.system",
        "subprocess.Popen",
        "ctypes.dlsym",
        "ctypes.call_function",
        "ctypes.cdata",
        "socket.bind",
        "socket.connect",
        "socket.sendto",
        "socket.sendmsg",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "socket.getnameinfo",
        "socket.sethostname",
    )
)
# Builtin modules whose functions the guard replaces; importing them afresh would bring the originals back.
PATCHED = frozenset(("_posixsubprocess", "posix"))
# Tracing could step over a test's asserts; blocked in every test run.
TRACING = frozenset(("sys.settrace", "sys.setprofile", "sys.monitoring.register_callback"))
MEMORY_ERROR = b'{"event": "exception", "type": "MemoryError"}\n'


def deny(event: object, *args: object) -> None:
    """Refuse an audited action: the program sees a PermissionError naming it."""
    raise PermissionError(f"blocked by the selfevolve sandbox: {event}")


def resolve(path: object) -> str | None:
    """The real absolute path of a path argument, or of an fd through /proc/self/fd; None if unknown."""
    try:
        if isinstance(path, int):
            return os.readlink(f"/proc/self/fd/{path}")
        return os.path.realpath(os.fsdecode(path))
    except (OSError, TypeError, ValueError):
        return None


def install_guard(workdir: str, allow_fork: bool) -> None:
    """Audit hooks (permanent once added) that keep writes in ``workdir`` and block network, exec and signals."""
    workdir = os.path.realpath(workdir)
    session = os.getsid(0)
    trusted = tuple({p.rstrip("/") + "/" for p in (sys.prefix, sys.base_prefix) if len(p) > 1})

    def inside(path: object) -> bool:
        real = resolve(path)
        return real is not None and (real == "/dev/null" or real == workdir or real.startswith(workdir + "/"))

    def other_process(path: object) -> bool:
        if isinstance(path, str) and path.startswith(trusted) and not path.startswith("/proc/"):
            return False  # the interpreter's own files (imports): skip resolving symlinks
        real = resolve(path)
        if real is None or not real.startswith("/proc/"):
            return False
        part = real.split("/")[2]
        return part.isdigit() and int(part) != _getpid()

    def may_signal(pid: int) -> bool:
        if pid in (0, _getpid()):
            return True
        if pid == -1:
            return False
        try:
            return os.getsid(abs(pid)) == session
        except OSError:
            return False

    def hook(event: str, args: tuple) -> None:
        if event in BLOCKED or (event in ("os.fork", "os.forkpty") and not allow_fork):
            deny(event)
        elif event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                return
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & WRITE_FLAGS)
            if (writes and not inside(path)) or other_process(path):
                deny(f"open {path!r}")
        elif event in PATH_EVENTS:
            if not all(inside(args[i]) for i in PATH_EVENTS[event]):
                deny(f"{event} {args[PATH_EVENTS[event][0]]!r}")
        elif event in ("os.kill", "os.killpg"):
            pid = args[0] if event == "os.kill" else -args[0]
            if not may_signal(pid):
                deny(f"{event} {args[0]}")
        elif event == "resource.prlimit":
            if args[2] is not None and args[0] not in (0, _getpid()):
                deny(event)
        elif event == "socket.__new__":
            if args[1] != 1:  # AF_UNIX only (socketpair, multiprocessing)
                deny(event)
        elif event == "ctypes.dlopen" and args[0] is not None:
            deny(f"loading {args[0]!r}")  # its initialisers would run native code
        elif event == "import" and args[0] in PATCHED:
            deny(f"import {args[0]}")

    import _posixsubprocess
    import posix

    # Neither raises an audit event: a direct fork_exec would start programs, mknod (as root) device files.
    _posixsubprocess.fork_exec = functools.partial(deny, "_posixsubprocess.fork_exec")
    posix.mknod = os.mknod = functools.partial(deny, "os.mknod")
    sys.addaudithook(hook)


def block_tracing() -> None:
    """Test runs: no trace or profile functions (a tracer can jump over a check's asserts)."""

    def hook(event: str, args: tuple) -> None:
        if event in TRACING:
            deny(event)

    sys.addaudithook(hook)


def cpu_seconds() -> float:
    """CPU time of this process and of the children it reaped."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def report(fd: int, message: dict | bytes) -> None:
    """One JSON line to the harness; a program that broke the pipe only loses its own report."""
    with contextlib.suppress(Exception):
        _write(fd, message if isinstance(message, bytes) else (_dumps(message) + "\n").encode())


def run(config: dict) -> None:
    """Run the program as ``__main__``; report how it ended; in a test run, prove it reached its end."""
    fd, workdir = config["report_fd"], config["workdir"]
    path = os.path.join(workdir, config["program"])
    sys.argv = [path]
    sys.path.insert(0, workdir)
    module = types.ModuleType("__main__")
    module.__file__ = path
    module.__builtins__ = builtins
    sys.modules["__main__"] = module
    main_pid = _getpid()
    before = dict(vars(builtins))
    with open(path, "rb") as handle:
        source = handle.read()
    try:
        exec(compile(source, path, "exec"), vars(module))
    except SystemExit:
        report(fd, {"event": "exit", "cpu": cpu_seconds()})
        raise
    except MemoryError as exc:
        report(fd, MEMORY_ERROR)
        print_error(exc)
        sys.exit(1)
    except BaseException as exc:
        report(fd, {"event": "exception", "type": type(exc).__name__, "cpu": cpu_seconds()})
        print_error(exc)
        sys.exit(1)
    if _getpid() != main_pid:
        return
    changed = sorted(
        k for k in set(before) | set(vars(builtins)) if before.get(k) is not vars(builtins).get(k)
    )
    message: dict = {"event": "end", "builtins_changed": changed, "cpu": cpu_seconds()}
    if config["nonce_fd"] is not None and not changed:
        with contextlib.suppress(OSError):
            message["proof"] = _read(config["nonce_fd"], 256).decode(errors="replace")
    report(fd, message)


def print_error(exc: BaseException) -> None:
    """The traceback as Python prints it, without this file's frame."""
    import traceback

    with contextlib.suppress(BaseException):
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None)


def main() -> None:
    """Drop privileges, set limits, install guards, run the program."""
    config = json.loads(sys.argv[1])
    if config["drop"] is not None:
        uid, gid = config["drop"]
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    for name, (soft, hard) in config["limits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    if config["guard"]:
        install_guard(config["workdir"], config["allow_fork"])
    if config["nonce_fd"] is not None:
        block_tracing()
    run(config)


if __name__ == "__main__":
    main()
