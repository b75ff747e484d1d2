"""The loop's run config: steps by name, phase.step.key overrides, checked keys and types, guards, diffs."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfevolve.errors import SelfEvolveError
from selfevolve.loop.config import (
    Guard,
    build_run_config,
    config_differences,
    load_run_config,
    run_config_dict,
)
from selfevolve.loop.steps import STEPS
from selfevolve.loop.steps.acquire import FictionalDocuments, SynthesizeQA
from selfevolve.loop.steps.evaluate import HeldoutQA, Retention
from selfevolve.loop.steps.update import SelfParam

BASE = {
    "model": "tiny-random-llama",
    "acquire": [{"step": "fictional_documents", "count": 2}, {"step": "synthesize_qa"}],
    "refine": [{"step": "grounding_filter"}],
    "update": [{"step": "selfparam", "train": {"epochs": 3}}],
    "evaluate": [{"step": "heldout_qa", "questions": "fictional:2:0"}, {"step": "retention"}],
    "guards": [{"metric": "retention.perplexity", "max_increase": 0.1}],
}


def test_steps_are_built_from_names_with_their_defaults_and_overrides():
    config = build_run_config(
        BASE, ["update.selfparam.train.lora_rank=4", "acquire.synthesize_qa.temperature=1", "seed=7"]
    )
    assert config.acquire == [FictionalDocuments(count=2), SynthesizeQA(temperature=1.0)]
    (selfparam,) = config.update
    assert (selfparam.train.epochs, selfparam.train.lora_rank, selfparam.train.learning_rate) == (3, 4, None)
    assert selfparam.top_k == 0 and config.seed == 7 and config.iterations == 2
    assert config.evaluate == [HeldoutQA(questions="fictional:2:0"), Retention()]
    assert config.guards == [Guard("retention.perplexity", max_increase=0.1)]
    assert [(phase, name) for phase, name, _ in config.steps(0)] == [
        ("evaluate", "heldout_qa"),
        ("evaluate", "retention"),
    ]
    assert [name for _, name, _ in config.steps(1)] == [
        "fictional_documents",
        "synthesize_qa",
        "grounding_filter",
        "selfparam",
        "heldout_qa",
        "retention",
    ]


def test_resolved_config_round_trips_through_yaml(tmp_path):
    config = build_run_config(BASE, ["update.selfparam.train.epochs=5"])
    data = run_config_dict(config)
    assert data["update"][0]["step"] == "selfparam" and data["update"][0]["train"]["epochs"] == 5
    path = tmp_path / "config.yaml"
    import yaml

    path.write_text(yaml.safe_dump(data))
    assert load_run_config(path) == config
    assert config_differences(config, load_run_config(path)) == []


def test_differences_name_each_changed_key():
    old = build_run_config(BASE)
    new = build_run_config(BASE, ["update.selfparam.train.epochs=4", "seed=1", "out=elsewhere"])
    assert config_differences(old, new) == ["seed: 0 -> 1", "update.selfparam.train.epochs: 3 -> 4"]
    fewer = build_run_config({**BASE, "refine": []})
    assert config_differences(old, fewer)[0] == "refine: ['grounding_filter'] -> []"


@pytest.mark.parametrize(
    ("values", "overrides", "message"),
    [
        (
            {"acquire": [{"step": "fictional_docs"}]},
            [],
            "unknown step 'fictional_docs' in acquire; known steps: fictional_documents, documents",
        ),
        ({"refine": [{"step": "selfparam"}]}, [], "step 'selfparam' belongs to update, not refine"),
        ({"refine": [{"step": "grounding_filter"}, {"step": "grounding_filter"}]}, [], "lists a step twice"),
        ({"refine": {"step": "grounding_filter"}}, [], "refine must be a list"),
        (
            {},
            ["update.selfparam.train.epochs=many"],
            "'update.selfparam.train.epochs': expected int, got 'many'",
        ),
        ({}, ["update.selfparam.epochs=3"], "unknown config key(s) update.selfparam.epochs for SelfParam"),
        ({}, ["update.sft.train.epochs=3"], "update has no step 'sft' (it has: selfparam)"),
        ({}, ["iterations=-1"], "iterations must be >= 0"),
        ({}, ["colour=red"], "unknown config key(s) colour for RunConfig"),
        (
            {"selection_metric": "heldout_qa.bleu"},
            [],
            "metric 'heldout_qa.bleu' is not scored by an evaluate step",
        ),
        ({"guards": [{"metric": "retention.recall"}]}, [], "set max_increase or max_decrease"),
        ({"evaluate": []}, [], "evaluate lists no step"),
        (
            {"acquire": [{"step": "documents", "path": "/no/such/file.jsonl"}]},
            [],
            "documents.path /no/such/file.jsonl does not exist",
        ),
        (
            {"evaluate": [{"step": "heldout_qa", "questions": "nope.jsonl"}]},
            [],
            "questions nope.jsonl does not exist",
        ),
        ({"update": [{"step": "selfparam", "regularizer_weight": 1.0}]}, [], "needs regularizer_texts"),
    ],
)
def test_bad_configs_are_one_line_errors(values, overrides, message):
    with pytest.raises(SelfEvolveError) as caught:
        build_run_config({**BASE, **values}, overrides)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_every_step_is_a_dataclass_with_a_phase_and_defaults():
    for name, cls in STEPS.items():
        assert cls.PHASE in ("acquire", "refine", "update", "evaluate"), name
        if name != "documents":  # needs a path
            assert isinstance(cls(), cls)
    assert SelfParam().train.epochs == 8  # the library's SELF-PARAM defaults


def test_guards_hold_within_their_tolerance():
    rise = Guard("retention.perplexity", max_increase=0.10)
    assert rise.violation(30.0, 27.5) is None  # 27.5 * 1.1 = 30.25
    assert rise.violation(30.3, 27.5) == "retention.perplexity rose to 30.3 from 27.5 (allowed: 10%)"
    drop = Guard("retention.recall", max_decrease=0.25, relative=False)
    assert drop.violation(0.75, 1.0) is None
    assert drop.violation(0.7, 1.0) == "retention.recall fell to 0.7 from 1 (allowed: 0.25)"
    both = Guard("heldout_qa.f1", max_increase=0.0, max_decrease=0.0)
    assert both.violation(0.5, 0.5) is None and "rose" in both.violation(0.51, 0.5)


@pytest.mark.parametrize("name", ["knowledge-loop.yaml", "repair-loop.yaml"])
def test_the_example_configs_load(name, monkeypatch):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # their data paths are relative to the repository root
    config = load_run_config(root / "examples" / name)
    assert config.model == "smollm2-135m-instruct" and config.iterations == 2 and config.guards


def test_data_paths_become_absolute_so_a_resume_finds_them_from_anywhere(tmp_path, monkeypatch):
    (tmp_path / "docs.txt").write_text("Ada was born in London.")
    monkeypatch.chdir(tmp_path)
    config = build_run_config({**BASE, "acquire": [{"step": "documents", "path": "docs.txt"}]})
    assert config.acquire[0].path == str(tmp_path / "docs.txt")
    assert config.evaluate[0].questions == "fictional:2:0"  # not a path
