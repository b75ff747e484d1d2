"""The code that runs first inside the sandbox: ``python -I -S -c START <this file's code> <config>``.

It runs as ``__main__`` from its code object (compiled once by the harness; the config is marshal data too),
never imported by selfevolve: it reaches the sandbox on the command line, so no file of selfevolve or of any
site-packages has to be visible there. It imports only modules built into the interpreter, so that a program
that imports nothing starts fast; a served run also gets ``wire.py``'s code in the config. It gives the program
the ``exit`` and ``quit`` that ``site`` (skipped by ``-S``) would have. In order it drops to the
sandbox uid (bubblewrap as root), sets the resource limits, installs the audit-hook guards (tiers without
namespaces), runs the program as ``__main__`` and tells the harness on the report pipe how the program ended.
In a served run (:func:`selfevolve.sandbox.run_remote`) the original process then answers calls to the
program's functions, one line per request and per answer, until the request pipe closes. Nothing here decides
a verdict: the harness trusts no byte this process writes.
"""

from __future__ import annotations

import _sitebuiltins
import builtins
import marshal
import os
import resource
import sys
import types
from _json import encode_basestring_ascii

_write, _getpid = os.write, os.getpid

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# Audit events that change a path: (path argument, its dir_fd argument or None) for each path they take.
PATH_EVENTS = {
    "os.remove": ((0, 1),),
    "os.rmdir": ((0, 1),),
    "os.rename": ((0, 2), (1, 3)),
    "os.mkdir": ((0, 2),),
    "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),),
    "os.link": ((0, 2), (1, 3)),
    "os.symlink": ((1, 2),),
    "os.truncate": ((0, None),),
    "os.utime": ((0, 3),),
    "os.setxattr": ((0, None),),
    "os.removexattr": ((0, None),),
    "shutil.rmtree": ((0, 1),),
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
MEMORY_ERROR = b'{"event": "exception", "type": "MemoryError"}\n'  # written without allocating
MESSAGE_CHARS = 300  # of an exception's message in a reply


def deny(event: object) -> None:
    """Refuse an audited action: the program sees a PermissionError naming it."""
    raise PermissionError(f"blocked by the selfevolve sandbox: {event}")


def denied(event: str) -> types.FunctionType:
    """A stand-in for a function that raises no audit event: calling it is refused."""

    def refuse(*args: object, **kwargs: object) -> None:
        deny(event)

    return refuse


def resolve(path: object, dir_fd: object = None) -> str | None:
    """The real absolute path of a path argument (relative ones from ``dir_fd`` when given), or of an fd through
    /proc/self/fd, every ``..`` and symlink followed; None if unknown."""
    try:
        if isinstance(path, int):
            return os.readlink(f"/proc/self/fd/{path}")
        text = os.fsdecode(path)
        if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(text):
            text = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), text)
        return os.path.realpath(text)
    except (OSError, TypeError, ValueError):
        return None


def install_guard(workdir: str, allow_fork: bool, view: dict) -> None:
    """Audit hooks (permanent once added) that keep writes in ``workdir``, reads in the ``view`` (what bubblewrap
    would show), and block network, exec and signals."""
    workdir = os.path.realpath(workdir)
    session = os.getsid(0)
    shown = (workdir, *view["shown"])
    hidden = tuple(view["hidden"])

    def within(real: str | None, roots: tuple[str, ...]) -> bool:
        return real is not None and any(real == root or real.startswith(root + "/") for root in roots)

    def inside(real: str | None) -> bool:
        return real == "/dev/null" or within(real, (workdir,))

    def unseen(real: str | None) -> bool:
        """Outside the view and there (a path that is not there, such as a descriptor's, opens nothing new)."""
        if real is None:
            return True
        return (within(real, hidden) or not within(real, shown)) and os.path.lexists(real)

    def other_process(real: str | None) -> bool:
        """``real`` is resolved, so no spelling (``..``, symlinks, ``/proc/self/root``) gets past."""
        parts = real.split("/") if real else []
        return len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and int(parts[2]) != _getpid()

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
            real = resolve(path)
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & WRITE_FLAGS)
            if (writes and not inside(real)) or other_process(real) or unseen(real):
                deny(f"open {path!r}")
        elif event in ("os.listdir", "os.scandir"):
            real = resolve("." if args[0] is None else args[0])
            if other_process(real) or unseen(real):
                deny(f"{event} {args[0]!r}")
        elif event in PATH_EVENTS:
            for at, fd_at in PATH_EVENTS[event]:
                if not inside(resolve(args[at], None if fd_at is None else args[fd_at])):
                    deny(f"{event} {args[at]!r}")
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
    _posixsubprocess.fork_exec = denied("_posixsubprocess.fork_exec")
    posix.mknod = os.mknod = denied("os.mknod")
    posix.open = os.open = opening_from(posix.open)
    sys.addaudithook(hook)


def opening_from(open_: types.BuiltinFunctionType) -> types.FunctionType:
    """``os.open`` with a relative path under ``dir_fd`` made absolute: its audit event has no dir_fd, so the
    guard would otherwise check the path against the work directory."""

    def guarded_open(path: object, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if dir_fd is not None:
            path, dir_fd = resolve(path, dir_fd) or path, None
        return open_(path, flags, mode, dir_fd=dir_fd)

    return guarded_open


def cpu_seconds() -> float:
    """CPU time of this process and of the children it reaped."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def report(fd: int, event: str, kind: str | None = None) -> None:
    """One JSON line to the harness: the event, the exception type if any, the CPU seconds so far. A program
    that broke the pipe only loses its own report."""
    try:
        typed = f', "type": {encode_basestring_ascii(kind)}' if kind is not None else ""
        _write(fd, f'{{"event": "{event}"{typed}, "cpu": {cpu_seconds()!r}}}\n'.encode())
    except Exception:
        return


def run(config: dict) -> None:
    """Run the program as ``__main__``; report how it ended; in a served run, then answer calls."""
    fd, workdir = config["report_fd"], config["workdir"]
    path = os.path.join(workdir, config["program"])
    sys.argv = [path]
    sys.path.insert(0, workdir)
    module = types.ModuleType("__main__")
    module.__file__ = path
    module.__builtins__ = builtins
    sys.modules["__main__"] = module
    main_pid = _getpid()
    with open(path, "rb") as handle:
        source = handle.read()
    try:
        exec(compile(source, path, "exec"), vars(module))
    except SystemExit:
        report(fd, "exit")
        raise
    except MemoryError as exc:
        try:  # noqa: SIM105 (contextlib would be one more import at every start)
            _write(fd, MEMORY_ERROR)
        except Exception:
            pass
        print_error(exc)
        sys.exit(1)
    except BaseException as exc:
        report(fd, "exception", type(exc).__name__)
        print_error(exc)
        sys.exit(1)
    if _getpid() != main_pid:
        return
    if config["request_fd"] is not None:
        serve(config, vars(module))
    report(fd, "end")


def serve(config: dict, namespace: dict) -> None:
    """Answer requests ``{"call": name, "args": [...], "kwargs": {...}}`` (hex of marshal data, one a line) with
    JSON lines ``{"value": ...}`` or ``{"raised": type, "message": text}``, ``{"ready": true}`` first, until the
    harness closes the request pipe."""
    wire = types.ModuleType("_selfevolve_wire")
    exec(marshal.loads(bytes.fromhex(config["wire"])), vars(wire))
    describe = namespace[config["describe"]] if config["describe"] else None
    out = config["reply_fd"]
    send(out, wire.dumps({"ready": True}))
    with os.fdopen(config["request_fd"], "rb") as requests:
        for line in requests:
            try:
                request = marshal.loads(bytes.fromhex(line.decode()))
                args = [wire.decode(a) for a in request["args"]]
                kwargs = {k: wire.decode(v) for k, v in request["kwargs"].items()}
                value = namespace[request["call"]](*args, **kwargs)
                answer = {"value": wire.encode(value, describe)}
            except BaseException as exc:  # the call's failure is its answer, whatever it is
                print_error(exc)
                answer = {"raised": type(exc).__name__, "message": message(exc)}
            for stream in (sys.stdout, sys.stderr):
                try:  # noqa: SIM105
                    stream.flush()
                except Exception:
                    pass
            send(out, wire.dumps(answer))


def send(fd: int, data: bytes) -> None:
    """Write all of ``data`` (a pipe takes a long reply in several writes)."""
    view = memoryview(data)
    while view:
        view = view[_write(fd, view) :]


def message(exc: BaseException) -> str:
    """An exception's message, cut to MESSAGE_CHARS; never raises."""
    try:
        return str(exc)[:MESSAGE_CHARS]
    except BaseException:
        return ""


def print_error(exc: BaseException) -> None:
    """The traceback as Python prints it, without this file's frame."""
    try:
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None)
    except BaseException:
        return


def main() -> None:
    """Drop privileges, set limits, install guards, run the program."""
    config = marshal.loads(bytes.fromhex(sys.argv[2]))
    builtins.exit, builtins.quit = (
        _sitebuiltins.Quitter(name, "Ctrl-D (i.e. EOF)") for name in ("exit", "quit")
    )
    if config["drop"] is not None:
        uid, gid = config["drop"]
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    for name, (soft, hard) in config["limits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    if config["guard"]:
        install_guard(config["workdir"], config["allow_fork"], config["view"])
    run(config)


if __name__ == "__main__":
    main()
