"""``selfevolve inject`` and ``selfevolve eval-qa`` on tiny random models, and their one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from selfevolve.cli import app
from selfevolve.runtime import load_model

runner = CliRunner()
FAST = ["--set", "train.epochs=1", "--set", "synthesis.questions_per_document=2"]
FAST += ["--set", "synthesis.statements_per_document=1", "--set", "synthesis.min_support=0"]


def test_inject_sequential_writes_a_loadable_model_and_a_report(tmp_path):
    out = tmp_path / "run"
    args = [
        "inject",
        "fictional:2:5",
        "--model",
        "tiny-random-qwen2",
        "--out",
        str(out),
        "--mode",
        "sequential",
    ]
    result = runner.invoke(app, [*args, "--set", "rounds=2", "--set", "top_k=8", *FAST])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "sequential" and len(report["rounds"]) == 2
    assert len(report["rounds"][1]["retention"]) == 2  # F1 on round 0's and round 1's documents
    assert set(report["before"]) == {"qa_f1", "exact_match", "answer_recall"}
    reloaded = load_model(str(out / "model"))
    assert not any("lora" in name for name, _ in reloaded.model.named_parameters())
    assert (out / "config.yaml").is_file() and (out / "questions.jsonl").is_file()

    scored = runner.invoke(
        app,
        ["eval-qa", "--model", str(out / "model"), "--questions", str(out / "questions.jsonl"), "-n", "4"],
    )
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.output)["questions"] == 13  # 7 person facts + 6 organisation facts
    questions, documents = str(out / "questions.jsonl"), str(out / "documents.jsonl")
    args = [
        "eval-qa",
        "--model",
        "tiny-random-llama",
        "--questions",
        questions,
        "-n",
        "2",
        "--documents",
        documents,
    ]
    scored = runner.invoke(app, [*args, "--context", "document", "--out", str(tmp_path / "s.json")])
    assert scored.exit_code == 0, scored.output
    assert len(json.loads((tmp_path / "s.json").read_text())["rows"]) == 13


def test_inject_a_text_file_with_full_finetuning_and_resume(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("Vorlak Tessen\nVorlak Tessen is a glassblower. Vorlak was born in 1901 in Brimholm.\n")
    args = ["inject", str(doc), "--model", "tiny-random-qwen2", "--out", str(tmp_path / "o"), "--full", *FAST]
    unrelated = tmp_path / "essay.txt"
    unrelated.write_text("The sea was calm that morning, and the boats went out before dawn.\n")
    args += ["--mode", "single", "--store", str(tmp_path / "store.db"), "--regularizer-text", str(unrelated)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    # the first run finished, so the resumed one starts at its last checkpoint and has no step left to take
    assert report["resumed_from_step"] > 0 and report["train_steps"] == 0
    assert report["before"] is None  # no questions given
    assert "regularizer_weight: 1.0" in (tmp_path / "o" / "config.yaml").read_text()


def selfevolve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "selfevolve", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["inject", "fictional:2", "--out", "{tmp}", "--model", "tiny-random-llama", "--mode", "single"],
            "one document",
        ),
        (
            ["inject", "fictional:2", "--out", "{tmp}", "--set", "train.lr=1"],
            "unknown config key(s) train.lr",
        ),
        (["inject", "fictional:huge", "--out", "{tmp}"], "unknown knowledge set size"),
        (["inject", "{tmp}/missing.txt", "--out", "{tmp}"], "does not exist"),
        (
            ["inject", "fictional:1", "--out", "{tmp}", "--regularizer-text", "{tmp}/gone.txt"],
            "does not exist",
        ),
        (["eval-qa", "--questions", "{tmp}/missing.jsonl"], "does not exist"),
        (["eval-qa", "--questions", "{tmp}/q.jsonl", "--context", "document"], "needs --documents"),
    ],
)
def test_user_errors_are_one_line(tmp_path, args, needle):
    (tmp_path / "q.jsonl").write_text('{"question": "q?", "answer": "a"}\n')
    done = selfevolve(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_bad_mode_is_rejected(tmp_path):
    result = runner.invoke(app, ["inject", "fictional:1", "--out", str(tmp_path), "--mode", "parallel"])
    assert result.exit_code == 2
