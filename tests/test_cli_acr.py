"""``selfevolve acr``: JSON per target, the summary and histogram for a file, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from selfevolve.cli import app

runner = CliRunner()
FAST = ["--model", "tiny-random-llama", "--steps", "2", "--batch", "8", "--max-prompt-tokens", "7"]


def selfevolve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "selfevolve", *args], capture_output=True, text=True, timeout=300
    )


def test_acr_of_one_string_prints_one_json_line():
    result = runner.invoke(app, ["acr", "abc", *FAST])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["target"] == "abc" and record["target_tokens"] == 3
    assert set(record) >= {"prompt_tokens", "acr", "memorized", "success", "prompt", "steps", "seconds"}


def test_acr_of_a_file_writes_results_histogram_and_memorized_documents(tmp_path):
    targets = tmp_path / "targets.jsonl"
    targets.write_text('{"id": "a", "text": "xy", "set": "mine"}\n{"id": "b", "text": "zw"}\n')
    out, memorized = tmp_path / "out.jsonl", tmp_path / "memorized.jsonl"
    args = ["acr", "--file", str(targets), *FAST, "--out", str(out), "--memorized-out", str(memorized)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in result.stdout.strip().splitlines()] == ["a", "b"]
    assert len(out.read_text().splitlines()) == 2
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert memorized.is_file()
    again = runner.invoke(app, args)  # resumes: nothing left to search, same answers
    assert again.exit_code == 0 and again.stdout == result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["acr", "", "--model", "tiny-random-llama"], "empty"),
        (["acr", "--model", "tiny-random-llama"], "pass either a TEXT"),
        (["acr", "--file", "/nonexistent/t.jsonl"], "does not exist"),
        (["acr", "MALFORMED"], "not valid JSON"),
        (["acr", "hi", "--steps", "0"], "steps must be a positive integer"),
        (["acr", "hi", "--steps", "99999999"], "absurd"),
        (["acr", "hi", "--template", "alpaca"], "template must be"),
        (["acr", "hi", "--max-prompt-tokens", "3"], "start_tokens < max_prompt_tokens"),
        (["acr", "hi", "--model", "gpt-17"], "unknown model 'gpt-17'"),
    ],
)
def test_user_errors_are_one_line_without_traceback(tmp_path, args, needle):
    if "MALFORMED" in args:
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"text": "ok"}\n{"text": \n')
        args = ["acr", "--file", str(bad)]
    done = selfevolve(*args)
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
