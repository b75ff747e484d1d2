"""The loop on a tiny random model: provenance in the store, the collapse guard, selection, early stop, report."""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import yaml
from safetensors.torch import load_file

from selfevolve.errors import SelfEvolveError
from selfevolve.loop import STEPS, StepResult, evolve, load_run_config
from selfevolve.loop.state import LoopState, clone_model
from selfevolve.loop.steps.acquire import DOCUMENT, QA
from selfevolve.loop.steps.refine import GroundingFilter
from selfevolve.store import Experience, ExperienceStore

DOCUMENT_TEXT = (
    "Ada Lovelace was born in London in 1815. She wrote notes on engines. She wrote notes on engines."
)

PROVENANCE = """
SELECT e.response, t.step AS trained_by, d.step AS dropped_by, d.reason
FROM experiences e
LEFT JOIN decisions t ON t.experience_id = e.id AND t.phase = 'update' AND t.kept
LEFT JOIN decisions d ON d.experience_id = e.id AND NOT d.kept
WHERE e.run_id = ? AND e.iteration = ? AND e.phase = 'acquire' AND e.parent_id IS NOT NULL
ORDER BY e.id
"""


def tiny_config(tmp_path: Path, **changes) -> Path:
    """A two-iteration run over one small document file: cheap enough for every unit-test run."""
    documents = tmp_path / "docs.jsonl"
    documents.write_text(json.dumps({"id": "ada", "title": "Ada Lovelace", "text": DOCUMENT_TEXT}) + "\n")
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        json.dumps({"doc_id": "ada", "question": "Where was Ada born?", "answer": "London"}) + "\n"
    )
    config = {
        "model": "tiny-random-llama",
        "out": str(tmp_path / "run"),
        "iterations": 2,
        "acquire": [
            {"step": "documents", "path": str(documents)},
            {
                "step": "synthesize_qa",
                "questions_per_document": 1,
                "statements_per_document": 1,
                "max_new_tokens": 8,
            },
        ],
        "refine": [{"step": "grounding_filter"}],
        "update": [{"step": "selfparam", "train": {"epochs": 1}}],
        "evaluate": [
            {"step": "heldout_qa", "questions": str(questions), "max_new_tokens": 6},
            {"step": "retention", "max_new_tokens": 6, "max_tokens": 32},
        ],
        **changes,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_a_run_records_every_step_with_provenance_and_resumes_to_a_no_op(tmp_path):
    events = []
    summary = evolve(tiny_config(tmp_path), on_event=events.append)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {
        "config.yaml",
        "store.sqlite",
        "report.html",
        "model",
        "checkpoints",
    }
    assert load_run_config(run / "config.yaml").model == "tiny-random-llama"
    assert [(r.iteration, r.accepted) for r in summary.iterations] == [(0, True), (1, True), (2, True)]
    assert summary.iterations[0].reason == "the base model" and not summary.stopped_early
    assert [e.kind for e in events if e.kind not in ("start", "done")] == [
        "plan",
        "iteration",
        "iteration",
        "iteration",
        "finished",
    ]

    raw = sqlite3.connect(run / "store.sqlite")
    rows = raw.execute(PROVENANCE, (summary.run_id, 2)).fetchall()
    sentences = [r for r in rows if r[0] in DOCUMENT_TEXT]
    assert sentences == [
        ("Ada Lovelace was born in London in 1815.", "selfparam", None, None),
        ("She wrote notes on engines.", "selfparam", None, None),
        ("She wrote notes on engines.", None, "grounding_filter", "duplicate"),
    ]
    assert all((trained is None) != (dropped is None) for _, trained, dropped, _ in rows)  # each decided once
    parents = raw.execute(
        "SELECT DISTINCT p.task, p.iteration = c.iteration FROM experiences c JOIN experiences p ON c.parent_id = p.id"
    ).fetchall()
    assert parents == [("document", 1)]  # every QA pair names its own iteration's document
    per_iteration = raw.execute("SELECT iteration, count(*) FROM scores GROUP BY iteration").fetchall()
    assert per_iteration == [(0, 5), (1, 5), (2, 5)]
    revisions = raw.execute("SELECT DISTINCT iteration, model_revision FROM scores ORDER BY 1").fetchall()
    assert revisions == [
        (0, "tiny-random-llama@seed0"),
        (1, "tiny-random-llama@seed0+i1.selfparam"),
        (2, "tiny-random-llama@seed0+i2.selfparam"),
    ]
    counts = [
        raw.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("experiences", "decisions", "steps")
    ]
    raw.close()

    again = []
    assert evolve(tmp_path / "config.yaml", on_event=again.append).iterations == summary.iterations
    assert not [e for e in again if e.kind in ("start", "done")]  # nothing re-ran
    with ExperienceStore(run / "store.sqlite") as store:
        assert [
            len(store),
            len(store.decisions(summary.run_id)),
            len(store.step_records(summary.run_id)),
        ] == counts


def test_the_report_is_self_contained(tmp_path):
    evolve(tiny_config(tmp_path, iterations=1))
    page = (tmp_path / "run" / "report.html").read_text()
    images = re.findall(r"<img [^>]*>", page)
    assert len(images) == 2 and all('src="data:image/png;base64,' in i for i in images)
    assert "<script" not in page and "http://" not in page and "https://" not in page
    for needle in (
        "Iteration 1",
        "duplicate: 1",
        "accepted",
        "Shipped as",
        "retention-probe",
        "Where was Ada born?",
    ):
        assert needle in page


@dataclass
class Noise:
    """A damaging update: Gaussian noise on every weight (the collapse the guard must catch)."""

    PHASE: ClassVar[str] = "update"
    METRICS: ClassVar[tuple[str, ...]] = ()
    scale: float = 0.5

    def run(self, state: LoopState) -> StepResult:
        model = clone_model(state.model)
        with torch.no_grad():
            for parameter in model.model.parameters():
                parameter.add_(torch.randn_like(parameter) * self.scale)
        return StepResult(model=model, summary={"input": state.model.revision})


def test_the_guard_rolls_back_an_update_that_breaks_retention(tmp_path, monkeypatch):
    monkeypatch.setitem(STEPS, "noise", Noise)
    config = tiny_config(
        tmp_path,
        acquire=[],
        refine=[],
        update=[{"step": "noise"}],
        guards=[{"metric": "retention.perplexity", "max_increase": 0.10}],
    )
    summary = evolve(config, overrides=["update.noise.scale=0.5"])
    base, first, second = summary.iterations
    assert not first.accepted and not second.accepted and summary.best_iteration == 0
    assert re.fullmatch(
        r"rolled back: retention\.perplexity rose to [\d.e+]+ from [\d.]+ \(allowed: 10%\)", first.reason
    )
    assert (
        first.result["scores"]["retention.perplexity"] > 1.1 * base.result["scores"]["retention.perplexity"]
    )
    run = tmp_path / "run"
    with ExperienceStore(run / "store.sqlite") as store:
        second_input = store.step_record(summary.run_id, 2, "update", "noise").result["summary"]["input"]
    assert second_input == base.model_revision  # iteration 2 started again from the base model
    assert json.loads((run / "model" / "loop.json").read_text())["iteration"] == 0
    from selfevolve.runtime import load_model

    original = load_model("tiny-random-llama", seed=0).model.state_dict()
    shipped = weights(run / "model")
    assert all(torch.equal(shipped[k], original[k]) for k in shipped)
    assert not list((run / "checkpoints").iterdir())  # rolled-back checkpoints are gone
    assert "rolled back" in (run / "report.html").read_text()


@dataclass
class Nudge:
    """A harmless update: a small deterministic change to the weights."""

    PHASE: ClassVar[str] = "update"
    METRICS: ClassVar[tuple[str, ...]] = ()

    def run(self, state: LoopState) -> StepResult:
        model = clone_model(state.model)
        with torch.no_grad():
            for parameter in model.model.parameters():
                parameter.mul_(1.01)
        return StepResult(model=model)


@dataclass
class Scripted:
    """An evaluation whose score per iteration is fixed in advance: peaks at iteration 1, then decays."""

    PHASE: ClassVar[str] = "evaluate"
    METRICS: ClassVar[tuple[str, ...]] = ("score",)
    values: list[float] = field(default_factory=lambda: [0.1, 0.5, 0.3, 0.4])

    def run(self, state: LoopState) -> StepResult:
        return StepResult(metrics={"score": self.values[state.iteration]})


def test_the_best_accepted_model_ships_and_the_loop_stops_early(tmp_path, monkeypatch):
    monkeypatch.setitem(STEPS, "nudge", Nudge)
    monkeypatch.setitem(STEPS, "scripted", Scripted)
    config = tiny_config(
        tmp_path,
        iterations=3,
        patience=1,
        acquire=[],
        refine=[],
        update=[{"step": "nudge"}],
        evaluate=[{"step": "scripted"}],
        selection_metric="scripted.score",
    )
    summary = evolve(config)
    assert [r.iteration for r in summary.iterations] == [0, 1, 2]  # iteration 3 never ran
    assert [r.best_iteration for r in summary.iterations] == [0, 1, 1]
    assert summary.stopped_early and summary.best_iteration == 1
    assert summary.iterations[1].reason == "accepted: every guard held; new best scripted.score = 0.5"
    assert summary.iterations[2].reason.endswith("stopped early: 1 iteration(s) without a new best")
    run = tmp_path / "run"
    assert json.loads((run / "model" / "loop.json").read_text())["revision"].endswith("+i1.nudge")
    shipped, last = weights(run / "model"), weights(run / "checkpoints" / "iter02-nudge")
    key = "model.embed_tokens.weight"
    assert torch.allclose(last[key], shipped[key] * 1.01)  # the shipped model is one nudge behind the last
    assert "iteration 1</b>" in (run / "report.html").read_text()


def test_grounding_filter_keeps_supported_pairs_once(tmp_path):
    with ExperienceStore(tmp_path / "store.sqlite") as store:
        run = store.start_run("unit")
        document = "Ada Lovelace was born in London in 1815."
        (doc,) = store.record_step(
            run,
            1,
            "acquire",
            "documents",
            experiences=[Experience(run, DOCUMENT, "Ada", document, "acquire", metadata={"doc_id": "ada"})],
        )
        responses = [
            "Ada was born in London.",  # content words ada, born, london: 3/3 in the document
            "Ada was born in Paris in 1900.",  # ada, born, paris, 1900: 2/4 = 0.5 < 0.6
            "Ada was born in London.",  # the first again
            "Ada Lovelace lived in London.",  # ada, lovelace, lived, london: 3/4 = 0.75
        ]
        ids = store.record_step(
            run,
            1,
            "acquire",
            "synthesize_qa",
            experiences=[Experience(run, QA, "Where?", r, "acquire", parent_id=doc) for r in responses],
        )
        state = LoopState(None, 1, store, run, tmp_path, seed=0)
        result = GroundingFilter(min_support=0.6).run(state)
        assert [(d.experience_id, d.kept, d.reason) for d in result.decisions] == [
            (ids[0], True, "supported"),
            (ids[1], False, "support below 0.6"),
            (ids[2], False, "duplicate"),
            (ids[3], True, "supported"),
        ]
        store.record_step(run, 1, "refine", "grounding_filter", decisions=result.decisions)
        assert [e.id for e in state.kept(QA)] == [ids[0], ids[3]]
        assert [(d.kept, d.reason) for d in GroundingFilter(min_support=0.8).run(state).decisions] == [
            (True, "supported"),
            (False, "support below 0.8"),
        ]  # a second filter sees only what the first kept


@pytest.mark.parametrize("existing", ["same", "other"])
def test_a_run_directory_is_resumed_only_with_its_own_config(tmp_path, existing):
    config = tiny_config(tmp_path, iterations=0)
    evolve(config)
    before = {
        p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != "report.html"
    }
    overrides = [] if existing == "same" else ["evaluate.retention.max_tokens=16"]
    if existing == "same":
        evolve(tmp_path / "run")  # the directory itself resumes (here: nothing left to do)
    else:
        from selfevolve.errors import SelfEvolveError

        with pytest.raises(
            SelfEvolveError, match=r"another config \(evaluate\.retention\.max_tokens: 32 -> 16\)"
        ):
            evolve(config, overrides=overrides)
    after = {
        p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != "report.html"
    }
    assert after.keys() == before.keys() and all(
        after[p] == before[p] for p in before if p.suffix != ".sqlite"
    )


def test_a_diverged_metric_is_a_broken_guard_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setitem(STEPS, "noise", Noise)
    config = tiny_config(
        tmp_path,
        iterations=1,
        acquire=[],
        refine=[],
        update=[{"step": "noise", "scale": 1000.0}],  # perplexity overflows a float
        guards=[{"metric": "retention.perplexity", "max_increase": 0.10}],
    )
    (_, first) = evolve(config).iterations
    assert first.reason == "rolled back: retention.perplexity is not a finite number"
    assert first.result["scores"]["retention.perplexity"] is None
    assert "n/a" in (tmp_path / "run" / "report.html").read_text()


def test_a_run_that_never_finished_a_step_takes_a_corrected_config(tmp_path):
    from selfevolve.errors import SelfEvolveError

    config = tiny_config(tmp_path, iterations=0)
    with pytest.raises(SelfEvolveError, match="unknown model 'tiny-random-lama'"):
        evolve(config, overrides=["model=tiny-random-lama"])  # a typo: config.yaml is written, no step ran
    assert evolve(config).iterations[0].reason == "the base model"


def test_the_acr_step_audits_what_the_iteration_injected(tmp_path):
    # A 2-step GCG budget per prompt length: the tiny random model memorizes nothing, so every target is a
    # failure bound (ACR = target tokens / max_prompt_tokens), memorized share 0, and each audit is stored.
    search = {"gcg": {"steps": 2, "batch": 4, "topk": 8}, "start_tokens": 4, "max_prompt_tokens": 6}
    config = tiny_config(tmp_path, iterations=1)
    raw = yaml.safe_load(config.read_text())
    raw["evaluate"].append({"step": "acr", "search": search})
    config.write_text(yaml.safe_dump(raw))
    evolve(config)
    store = ExperienceStore(tmp_path / "run" / "store.sqlite")
    audits = [e for e in store.query(task="acr-target") if e.iteration == 1]
    (run,) = store.runs()
    scores = {(s.iteration, s.metric): s.value for s in store.scores(run.id, step="acr")}
    store.close()
    assert [e.response for e in audits] == ["Ada Lovelace was born in London in 1815."]
    assert not audits[0].feedback["memorized"] and audits[0].score == pytest.approx(audits[0].feedback["acr"])
    assert scores[(1, "memorized")] == 0.0 and scores[(0, "memorized")] == 0.0  # iteration 0 injects nothing
    with pytest.raises(SelfEvolveError, match=r"acr\.sentences is 0"):
        STEPS["acr"](sentences=0)
