"""``selfevolve evolve`` and ``selfevolve report``: a summary on success; on bad input one line on stderr, exit
status 2, and nothing changed in an existing run directory."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
import yaml

from selfevolve import cli

CONFIG = {
    "model": "tiny-random-llama",
    "iterations": 1,
    "acquire": [
        {"step": "fictional_documents"},
        {
            "step": "synthesize_qa",
            "questions_per_document": 1,
            "statements_per_document": 0,
            "max_new_tokens": 8,
        },
    ],
    "refine": [{"step": "grounding_filter"}],
    "update": [{"step": "sft", "train": {"epochs": 1}}],
    "evaluate": [
        {"step": "heldout_qa", "max_new_tokens": 6},
        {"step": "retention", "max_new_tokens": 6, "max_tokens": 32},
    ],
}


def selfevolve(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the console entry point in-process: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["selfevolve", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def write_config(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**CONFIG, "out": str(path.parent / "default-out"), **changes}))
    return path


def fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def existing(tmp_path_factory):
    """A finished run directory and its config."""
    folder = tmp_path_factory.mktemp("existing")
    return write_config(folder / "config.yaml"), folder / "run"


def test_evolve_prints_a_summary_and_the_report_path(existing, monkeypatch, capsys):
    config, run = existing
    status, out, err = selfevolve(monkeypatch, capsys, "evolve", config, "--out", run)
    assert status in (0, None), err
    assert "heldout_qa.f1" in out and "retention.perplexity" in out and "shipped: iteration" in out
    assert f"report: {run / 'report.html'}" in out and (run / "model" / "model.safetensors").is_file()
    status, out, _ = selfevolve(monkeypatch, capsys, "report", run)
    assert status in (0, None) and out.strip() == f"report: {run / 'report.html'}"


@pytest.mark.parametrize(
    ("changes", "args", "needle"),
    [
        (
            {"refine": [{"step": "grounding"}]},
            [],
            "unknown step 'grounding' in refine; known steps: fictional_documents",
        ),
        (
            {},
            ["--set", "update.sft.train.epochs=many"],
            "'update.sft.train.epochs': expected int, got 'many'",
        ),
        ({"iterations": "two"}, [], "'iterations': expected int, got 'two'"),
        (
            {"acquire": [{"step": "documents", "path": "missing.jsonl"}]},
            [],
            "documents.path missing.jsonl does not exist",
        ),
        (
            {"evaluate": [{"step": "heldout_qa", "questions": "gone.jsonl"}]},
            [],
            "questions gone.jsonl does not exist",
        ),
        (
            {},
            ["--set", "evaluate.retention.max_tokens=64"],
            "holds a run made by another config (evaluate.retention.max_tokens: 32 -> 64)",
        ),
        ({"seed": 1}, [], "holds a run made by another config (seed: 0 -> 1)"),
    ],
)
def test_bad_input_is_one_line_and_leaves_the_run_directory_alone(
    existing, tmp_path, monkeypatch, capsys, changes, args, needle
):
    _, run = existing
    if not (run / "config.yaml").is_file():
        pytest.skip("needs the run of test_evolve_prints_a_summary_and_the_report_path")
    before = fingerprint(run)
    config = write_config(tmp_path / "config.yaml", **changes)
    status, _, err = selfevolve(monkeypatch, capsys, "evolve", config, "--out", run, *args)
    assert status == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert fingerprint(run) == before


def test_an_unwritable_or_foreign_output_directory_is_refused(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path / "config.yaml")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    status, _, err = selfevolve(monkeypatch, capsys, "evolve", config, "--out", blocker / "run")
    assert status == 2 and f"cannot write to {blocker / 'run'}" in err and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "not a folder"

    foreign = tmp_path / "someone-elses"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    status, _, err = selfevolve(monkeypatch, capsys, "evolve", config, "--out", foreign)
    assert status == 2 and "is not empty and holds no run" in err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    status, _, err = selfevolve(monkeypatch, capsys, "evolve", config, "--out", tmp_path / "new", "--resume")
    assert status == 2 and "nothing to resume" in err and not (tmp_path / "new").exists()

    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        status, _, err = selfevolve(monkeypatch, capsys, "evolve", config, "--out", locked / "run")
        assert status == 2 and "cannot write to" in err

    status, _, err = selfevolve(monkeypatch, capsys, "report", tmp_path)
    assert status == 2 and "holds no loop run" in err
