"""The command line: real subprocesses for exit codes and error lines, CliRunner for the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from selfevolve import __version__, cli
from selfevolve.cli import app
from selfevolve.runtime.kv import SnapKV
from selfevolve.runtime.model import LocalModel

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def selfevolve(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "selfevolve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
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


def test_generate_streams_the_models_answer(tiny_llama, monkeypatch):
    pieces = []
    stream = LocalModel.stream

    def recorded(self, *args, **kwargs):
        for piece in stream(self, *args, **kwargs):
            pieces.append(piece)
            yield piece

    monkeypatch.setattr(LocalModel, "stream", recorded)
    args = ["generate", "hello", "--model", "tiny-random-llama", "-n", "8", "-t", "1.0", "--seed", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    # the same sampled answer as the library's, written as it streamed, then one newline
    (answer,) = tiny_llama.generate(
        [[{"role": "user", "content": "hello"}]], max_new_tokens=8, temperature=1.0, seed=3
    )
    assert len(answer.token_ids) == 8 and pieces and "".join(pieces) == answer.text
    assert result.stdout == answer.text + "\n"


# "a prompt longer than the budget" is 31 bytes; tiny-random-llama's byte-level chat rendering adds
# <|im_start|> "user\n" (5 bytes), <|im_end|> "\n" (1) and <|im_start|> "assistant\n" (10): 3 + 31 + 16 = 50
# prompt positions, against a SnapKV budget of 12 (window 4, below the 32 default, so 12 is a valid budget).
KV_ARGS = [
    "generate",
    "a prompt longer than the budget",
    "--model",
    "tiny-random-llama",
    "-n",
    "6",
    "--kv",
    "snapkv:12,window=4",
]


def test_generate_with_kv_below_the_prompt_length_reports_the_shrunken_cache():
    result = runner.invoke(app, KV_ARGS)
    assert result.exit_code == 0, result.output
    # every layer keeps 12 of 50 positions, so the bytes shrink by 50 / 12 = 4.17, printed as 4.2x
    assert result.stderr.strip().splitlines() == [
        "KV cache: 12 of 50 prompt positions kept per head, 0.0 -> 0.0 MiB (4.2x smaller)"
    ]


def test_generate_says_so_in_one_line_when_the_kv_hooks_evict_nothing(monkeypatch, capsys):
    monkeypatch.setattr(SnapKV, "compress", lambda self, *args: None)  # hooks that keep the whole prompt
    monkeypatch.setattr(sys, "argv", ["selfevolve", *KV_ARGS])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: SnapKV did not compress the prompt cache")
    assert "expected 12 positions per head after a 50-token prefill, found [50]" in error[0]


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


def test_bench_lists_every_benchmark_module():
    result = runner.invoke(app, ["bench"])
    assert result.exit_code == 0, result.output
    # the public modules of benchmarks/ (those starting with _ are helpers), sorted
    modules = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_"))
    assert {"acr", "codejudge", "generate", "inject", "needle", "repair", "sandbox"} <= set(modules)
    assert result.output == "benchmarks: " + ", ".join(modules) + "\n"


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
    chat = {r["prompt"]: r["response"] for r in records if r["task"] == "chat"}
    assert (
        "Paris" in chat["What is the capital of France?"]
    )  # the model's own answer, not the scored " Paris"
    scored = {r["response"]: r["score"] for r in records if r["task"] == "continuation-scoring"}
    assert max(scored, key=scored.get) == " Paris" and all(score < 0 for score in scored.values())
    (repair,) = [r for r in records if r["method"] == "next"]
    assert repair["task"].startswith("repair:HumanEval/3#") and "# (0) operations=" in repair["prompt"]
    assert repair["score"] in (0.0, 1.0) and repair["feedback"]["test"].startswith("assert ")
    assert "5. sandbox + NExT" in done.stdout and "6. trace-guided repair" in done.stdout


@pytest.mark.slow
def test_doctor_loads_the_default_model(smollm2):  # the fixture caches it, so doctor loads it
    done = selfevolve("doctor", env={"COLUMNS": "200"})
    assert done.returncode == 0, done.stdout + done.stderr
    row = next(line for line in done.stdout.splitlines() if "smollm2-135m-instruct" in line)
    name, status, seconds, detail = [cell.strip() for cell in row.strip(" │").split("│")]
    assert (name, status, detail) == ("smollm2-135m-instruct", "ok", smollm2.revision)
    assert float(seconds) > 0
