"""The command line: real subprocesses for exit codes and error lines, CliRunner for the rest."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from selfevolve import __version__
from selfevolve.cli import app

runner = CliRunner()


def selfevolve(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "selfevolve", *args], capture_output=True, text=True, timeout=timeout
    )


def test_version():
    done = selfevolve("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"selfevolve {__version__}"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["generate", "hi", "--model", "gpt-17"], "unknown model 'gpt-17'"),
        (["bench", "no-such-bench"], "unknown benchmark 'no-such-bench'"),
        (["generate", "hi", "--model", "/nonexistent/dir/"], "unknown model"),
        (["generate", "hi", "--model", "tiny-random-llama", "--device", "quantum"], "unknown device"),
        (["generate", "hi", "--model", "tiny-random-llama", "--kv", "snapkv:lots"], "KV compression"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, needle):
    done = selfevolve(*args)
    assert done.returncode == 2
    assert needle in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_generate_streams_an_answer():
    result = runner.invoke(app, ["generate", "hello", "--model", "tiny-random-llama", "-n", "6"])
    assert result.exit_code == 0, result.output
    assert result.output.endswith("\n") and len(result.output) > 1


def test_generate_with_kv_compression_matches_without_when_the_budget_covers_the_prompt():
    args = ["generate", "a short prompt", "--model", "tiny-random-llama", "-n", "6"]
    plain = runner.invoke(app, args)
    compressed = runner.invoke(app, [*args, "--kv", "snapkv:4096"])
    assert plain.exit_code == compressed.exit_code == 0, compressed.output
    assert compressed.output == plain.output


def test_generate_rejects_bad_numbers():
    result = runner.invoke(app, ["generate", "hi", "--model", "tiny-random-llama", "--max-new-tokens", "0"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["generate", "hi", "--model", "tiny-random-llama", "--raw", "--system", "x"])
    assert result.exit_code == 2


def test_models_lists_the_registry():
    result = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in (
        "smollm2-135m-instruct",
        "qwen2.5-coder-0.5b-instruct",
        "tiny-random-llama",
        "tiny-random-qwen2",
    ):
        assert name in result.output


def test_models_clear_cache_refuses_unknown_names():
    result = runner.invoke(app, ["models", "--clear-cache", "../../etc"])
    assert result.exit_code == 2


def test_bench_lists_benchmarks():
    result = runner.invoke(app, ["bench"])
    assert result.exit_code == 0 and "generate" in result.output


@pytest.mark.slow
def test_generate_on_the_embedded_model():
    done = selfevolve("generate", "What is the capital of France?", "--max-new-tokens", "16")
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout


@pytest.mark.slow
def test_demo_runs_and_records_experiences(tmp_path):
    done = selfevolve("demo", "--out", str(tmp_path), timeout=600)
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "experiences.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 9 and {r["phase"] for r in records} == {"acquire", "evaluate"}
    assert any("Paris" in r["response"] for r in records)
    (repair,) = [r for r in records if r["method"] == "next"]
    assert repair["task"].startswith("repair:HumanEval/3#") and "# (0) operations=" in repair["prompt"]
    assert repair["score"] in (0.0, 1.0) and repair["feedback"]["test"].startswith("assert ")
    assert "5. sandbox + NExT" in done.stdout and "6. trace-guided repair" in done.stdout


@pytest.mark.slow
def test_doctor_loads_the_default_model():
    done = selfevolve("doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "smollm2-135m-instruct" in done.stdout and "ok" in done.stdout
