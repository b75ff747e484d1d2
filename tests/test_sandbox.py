"""The sandbox against hostile programs, in every isolation tier that works on this machine (no skips).

Each hostile program ends with a failing check or exits non-zero unless its attack worked, so ``ok`` would
mean the attack succeeded; the tests also look at the host: files, the test process, leftover processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from selfevolve.errors import SelfEvolveError
from selfevolve.sandbox import OUTPUT_LIMIT, available_isolations, run_many, run_python, run_tests
from selfevolve.sandbox.isolation import MARKER_VAR, Isolation, kill_marked
from selfevolve.sandbox.run import _execute, _Job, _working

TIERS = available_isolations()
REPO = Path(__file__).resolve().parents[1]


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


def in_helper(program: str, tier: str, *, tests: bool = False, env: dict | None = None) -> dict:
    """Run the harness in a helper process of its own session (with ``env`` in its initial environment), so
    that an attack that works shows up as a failed test rather than a dead pytest."""
    run = "run_tests" if tests else "run_python"
    helper = (
        f"import dataclasses, json\nfrom selfevolve.sandbox import {run}\n"
        f"print(json.dumps(dataclasses.asdict({run}({program!r}, isolation={tier!r}))))"
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


def test_several_tiers_are_exercised_here():
    assert TIERS[-1] == "process" and len(TIERS) >= 1


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
    assert [r.status for r in run_many(["assert 1", "assert 0"], tests=True, isolation=tier)] == [
        "ok",
        "failed",
    ]


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
    """A folder in the repository (visible, read-only under bubblewrap) with one file in it."""
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
        for attack in (
            lambda: os.kill(os.getppid(), signal.SIGURG),
            lambda: os.killpg(os.getpgid(os.getppid()), signal.SIGURG),
            lambda: os.kill(-1, signal.SIGURG),
        ):
            try:
                attack()
            except OSError:
                pass
        assert False, "the check fails"
        """
    )
    try:
        result = run_tests(program, isolation=tier)
        time.sleep(0.2)
    finally:
        signal.signal(signal.SIGURG, previous)
    assert received == [] and result.status != "ok"


def test_killing_the_parent_fails(tier):
    program = code(
        """
        import os, signal
        for attack in (lambda: os.killpg(os.getpgid(os.getppid()), signal.SIGKILL), lambda: os.getppid()):
            try:
                os.kill(attack(), signal.SIGKILL)
            except OSError:
                pass
        os._exit(0)
        """
    )
    assert in_helper(program, tier, tests=True)["status"] == "failed"


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
    result = _execute(_Job(program, "", 10.0, 512, {}, {"MARKER": marker}, tier), tests=False)
    assert result.ok, result
    assert_nothing_left(marker)


# --- a test program cannot fake ok -------------------------------------------------------------------

CHEATS = {
    "os._exit": "import os\nos._exit(0)",
    "sys.exit": "import sys\nsys.exit(0)",
    "SystemExit in a patched sys.exit": "import sys\nsys.exit = lambda *a: None\nraise SystemExit",
    "atexit": "import atexit, os\natexit.register(lambda: os._exit(0))",
    "excepthook": "import os, sys\nsys.excepthook = lambda *a: os._exit(0)",
    "AssertionError replaced": "import builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})",
    "abs patched": "import builtins\nbuiltins.abs = lambda x: 0",
    "settrace": "import sys\nsys.settrace(lambda *a: None)",
    "fake sentinel": 'print(\'ok\', \'a\' * 32)\nimport os, json\nfor fd in range(3, 12):\n    try:\n        os.write(fd, b\'{"event": "end", "proof": "x"}\\n\')\n    except OSError:\n        pass\nos._exit(0)',
}


@pytest.mark.parametrize("cheat", CHEATS)
def test_a_failing_test_program_never_reports_ok(tier, cheat):
    program = CHEATS[cheat] + "\nassert abs(-5) == 0, 'the check fails'\n"
    result = run_tests(program, isolation=tier)
    assert result.status != "ok", result


def test_only_the_original_process_can_prove_the_end(tier):
    program = (
        "import os\nif os.fork():\n    os.wait()\n    os._exit(0)\nassert True, 'only the child gets here'\n"
    )
    result = run_tests(program, isolation=tier)
    assert result.status == "failed", result


def test_a_passing_test_program_is_ok_but_needs_its_end(tier):
    assert run_tests("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\n", isolation=tier).ok
    stopped = run_tests("import os\nos._exit(0)\nassert True\n", isolation=tier)
    assert stopped.status == "failed" and "no completion proof" in stopped.detail


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
