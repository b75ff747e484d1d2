"""The knowledge example on the embedded SmolLM2: injection must show in held-out QA without hurting retention."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfevolve.loop import evolve

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_knowledge_example_improves_held_out_qa_and_keeps_retention(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the example's data paths are relative to the repository root
    summary = evolve(ROOT / "examples" / "knowledge-loop.yaml", out=tmp_path / "run")
    base, first, second = (r.result["scores"] for r in summary.iterations)
    assert (
        first["heldout_qa.f1"] > base["heldout_qa.f1"]
        and first["heldout_qa.recall"] > base["heldout_qa.recall"]
    )
    assert (
        second["heldout_qa.f1"] >= first["heldout_qa.f1"]
        and second["heldout_qa.recall"] >= first["heldout_qa.recall"]
    )
    for scores in (first, second):
        assert scores["retention.perplexity"] <= 1.10 * base["retention.perplexity"]
    assert all(r.accepted for r in summary.iterations) and summary.best_iteration == 2
    assert (tmp_path / "run" / "report.html").is_file() and (
        tmp_path / "run" / "model" / "model.safetensors"
    ).is_file()
