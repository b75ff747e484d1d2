"""MiniPrompt's length schedule, ACR, the resumable audit, the target sets, and a string planted by fine-tuning."""

from __future__ import annotations

import json

import pytest

from selfevolve.acquire.knowledge import fictional_knowledge
from selfevolve.errors import SelfEvolveError
from selfevolve.evaluate import memorization
from selfevolve.evaluate.acr_targets import (
    Target,
    builtin_targets,
    fictional_sentences,
    licence_lines,
    load_targets,
    random_token_strings,
    write_targets,
)
from selfevolve.evaluate.gcg import GCGConfig, GCGResult
from selfevolve.evaluate.memorization import (
    MiniPromptConfig,
    acr_audit,
    histogram,
    minprompt_search,
    summarize,
)


class FakeOptimizer:
    """Succeeds exactly when the prompt has at least ``needed`` tokens; records every call."""

    def __init__(self, needed: int) -> None:
        self.needed, self.calls = needed, []

    def __call__(self, model, target, n_tokens, config, init=()) -> GCGResult:
        self.calls.append((n_tokens, config.steps, list(init)))
        ids = list(range(100, 100 + n_tokens))
        return GCGResult(n_tokens >= self.needed, ids, f"p{n_tokens}", 0.0, config.steps // 2, 1.0)


@pytest.mark.parametrize(
    ("needed", "lengths", "budgets", "prompt_tokens"),
    [
        (3, [5, 4, 3, 2], [40, 40, 40, 40], 3),  # success, n-1 until a failure: 2 fails, 7 >= 3 stops
        (5, [5, 4], [40, 40], 5),
        (
            12,
            [5, 10, 15, 14, 13, 12, 11],
            [40, 48, 57, 57, 57, 57, 57],
            12,
        ),  # up by 5 (x1.2 steps), down by 1
        (99, [5, 10, 15, 20, 25], [40, 48, 57, 68, 81], None),  # never: stops when 30 reaches the cap
    ],
)
def test_minprompt_follows_the_paper_schedule(tiny_llama, needed, lengths, budgets, prompt_tokens):
    fake = FakeOptimizer(needed)
    target = "0123456789"  # 10 byte tokens
    announced = []
    result = minprompt_search(
        tiny_llama,
        target,
        MiniPromptConfig(GCGConfig(steps=40)),
        optimizer=fake,
        on_length=lambda n, steps: announced.append((n, steps, len(fake.calls))),
    )
    assert [n for n, _, _ in fake.calls] == lengths
    assert announced == [(n, b, i) for i, (n, b) in enumerate(zip(lengths, budgets))]  # before each run
    assert [steps for _, steps, _ in fake.calls] == budgets
    assert result.prompt_tokens == prompt_tokens and result.target_tokens == 10
    assert result.success == (prompt_tokens is not None)
    assert result.acr == pytest.approx(10 / (prompt_tokens or 30))
    assert result.memorized == (prompt_tokens is not None and prompt_tokens < 10)
    assert result.steps == sum(b // 2 for b in budgets) and len(result.attempts) == len(lengths)
    if prompt_tokens is not None:
        assert result.prompt == f"p{prompt_tokens}"


def test_minprompt_warm_starts_each_length_from_the_last_prompt(tiny_llama):
    fake = FakeOptimizer(12)
    minprompt_search(tiny_llama, "0123456789", MiniPromptConfig(GCGConfig(steps=4)), optimizer=fake)
    inits = [init for _, _, init in fake.calls]
    assert inits[0] == [] and inits[1] == list(range(100, 105)) and inits[3] == list(range(100, 115))
    cold = FakeOptimizer(12)
    config = MiniPromptConfig(GCGConfig(steps=4), warm_start=False)
    minprompt_search(tiny_llama, "0123456789", config, optimizer=cold)
    assert all(init == [] for _, _, init in cold.calls)


@pytest.mark.parametrize(
    "kwargs", [{"start_tokens": 0}, {"start_tokens": 30}, {"grow_tokens": 0}, {"grow_steps": 0.5}]
)
def test_bad_search_settings_are_errors(kwargs):
    with pytest.raises(SelfEvolveError):
        MiniPromptConfig(**kwargs)


def test_a_string_planted_by_fine_tuning_is_memorized_and_a_random_string_is_not():
    from selfevolve.runtime import load_model
    from selfevolve.update.sft import CrossEntropyObjective
    from selfevolve.update.training import TrainingConfig, train

    model = load_model("tiny-random-llama", seed=1)
    planted = "the violet otter sings at dawn"  # 30 byte tokens
    ids = model.tokenizer(planted, add_special_tokens=False)["input_ids"]
    config = TrainingConfig(epochs=60, batch_size=4, learning_rate=1e-2, lora=False, warmup_ratio=0.0)
    train(model, [("Recite:", ids)] * 4, CrossEntropyObjective(), config)
    assert model.generate(["Recite:"], max_new_tokens=30)[0].text == planted

    search = MiniPromptConfig(GCGConfig(steps=30, batch=64, seed=0))
    planted_result, random_result = acr_audit(model, [planted, "q8#Lz!w0Kp"], search, progress=False)
    assert planted_result.success and planted_result.memorized
    assert planted_result.acr > 1 and planted_result.prompt_tokens < planted_result.target_tokens
    assert model.generate([planted_result.prompt], max_new_tokens=30)[0].text.startswith(planted)
    assert not random_result.memorized and random_result.acr < 1


def test_the_audit_appends_each_target_and_resumes_after_a_crash(tiny_llama, tmp_path, monkeypatch):
    out = tmp_path / "acr.jsonl"
    config = MiniPromptConfig(GCGConfig(steps=1, batch=4), start_tokens=1, max_prompt_tokens=2)
    first = acr_audit(
        tiny_llama, [Target("a", "xy"), Target("b", "zw")], config, progress=False, resume_file=out
    )
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["id"] == "a"
    assert json.loads(lines[1])["model"] == tiny_llama.revision
    with out.open("a") as handle:
        handle.write('{"model": "torn')  # a crash in the middle of a write

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished target was searched again")

    monkeypatch.setattr(memorization, "minprompt_search", must_not_run)
    again = acr_audit(
        tiny_llama, [Target("a", "xy"), Target("b", "zw")], config, progress=False, resume_file=out
    )
    assert [r["acr"] for r in again] == [r.acr for r in first]
    assert len(out.read_text().splitlines()) == 2


def test_a_resume_with_other_search_settings_searches_again(tiny_llama, tmp_path, monkeypatch):
    out = tmp_path / "acr.jsonl"
    targets = [Target("a", "xy"), Target("b", "zw")]
    one = MiniPromptConfig(GCGConfig(steps=1, batch=4), start_tokens=1, max_prompt_tokens=2)
    two = MiniPromptConfig(GCGConfig(steps=2, batch=4), start_tokens=1, max_prompt_tokens=2)
    acr_audit(tiny_llama, targets, one, progress=False, resume_file=out)
    searched = []
    search = memorization.minprompt_search

    def counted(model, item, config, **kwargs):
        searched.append((item.id, config.gcg.steps))
        return search(model, item, config, **kwargs)

    monkeypatch.setattr(memorization, "minprompt_search", counted)
    again = acr_audit(tiny_llama, targets, two, progress=False, resume_file=out)
    assert searched == [("a", 2), ("b", 2)]  # the steps=1 rows of the same targets were not reused
    assert [r.settings["gcg"]["steps"] for r in again] == [2, 2]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["settings"]["gcg"]["steps"]) for r in records] == [
        ("a", 1),
        ("b", 1),
        ("a", 2),
        ("b", 2),
    ]
    assert all(r["seconds"] > 0 for r in records)
    searched.clear()
    resumed = acr_audit(tiny_llama, targets, one, progress=False, resume_file=out)
    assert searched == [] and resumed == records[:2]  # the first settings' rows, reused as stored


def test_a_resume_file_of_another_model_is_refused(tiny_llama, tmp_path):
    out = tmp_path / "acr.jsonl"
    out.write_text(json.dumps({"model": "other@123", "id": "a", "target": "xy"}) + "\n")
    with pytest.raises(SelfEvolveError, match="other@123"):
        acr_audit(tiny_llama, ["xy"], MiniPromptConfig(), progress=False, resume_file=out)


def test_empty_targets_are_errors(tiny_llama):
    with pytest.raises(SelfEvolveError, match="no targets"):
        acr_audit(tiny_llama, [], progress=False)
    with pytest.raises(SelfEvolveError, match="empty"):
        acr_audit(tiny_llama, ["ok", " "], progress=False)


def test_builtin_target_sets(tiny_llama):
    documents = fictional_knowledge(2).documents
    targets = builtin_targets(
        tiny_llama.tokenizer, {"quotations": 2, "licences": 3, "random": 2}, documents=documents
    )
    assert [t.set for t in targets] == ["quotations"] * 2 + ["licences"] * 3 + ["random"] * 2 + [
        "fictional"
    ] * 2
    assert len({t.id for t in targets}) == len(targets)
    assert random_token_strings(tiny_llama.tokenizer, 3, seed=4) == random_token_strings(
        tiny_llama.tokenizer, 3, seed=4
    )
    assert random_token_strings(tiny_llama.tokenizer, 1, seed=4) != random_token_strings(
        tiny_llama.tokenizer, 1, seed=5
    )
    assert all(
        t.text.endswith(".") and t.text[0].isupper()
        for t in fictional_sentences(fictional_knowledge(3).documents)
    )
    assert licence_lines(1)[0].text == "http://www.apache.org/licenses/LICENSE-2.0"
    with pytest.raises(SelfEvolveError, match="unknown target set"):
        builtin_targets(tiny_llama.tokenizer, {"poems": 1})


def test_target_files_round_trip_and_bad_files_are_errors(tmp_path):
    path = write_targets([Target("x", " spaced text ", "mine"), Target("y", "more")], tmp_path / "t.jsonl")
    assert load_targets(path) == [Target("x", " spaced text ", "mine"), Target("y", "more", "custom")]
    bad = tmp_path / "bad.jsonl"
    for content, needle in [
        ('{"text": "a"}\n{not json\n', "bad.jsonl line 2: not valid JSON"),
        ('{"txt": "a"}\n', 'needs a non-empty string "text"'),
        ('{"text": "a", "id": "k"}\n{"text": "b", "id": "k"}\n', "duplicate"),
        ("\n\n", "holds no targets"),
    ]:
        bad.write_text(content)
        with pytest.raises(SelfEvolveError, match=needle):
            load_targets(bad)
    with pytest.raises(SelfEvolveError, match="does not exist"):
        load_targets(tmp_path / "missing.jsonl")


def test_summary_keeps_memorized_ratios_and_failure_bounds_apart(tmp_path):
    # The three quotations of docs/benchmarks.md: two 11-token lines found with 6-token prompts (ACR 11/6) and a
    # 12-token line with no prompt up to the cap of 15 (bound 12/15 = 0.8). Mixed, they averaged
    # (11/6 + 11/6 + 0.8) / 3 = 1.49; kept apart the memorized mean is 11/6 and the bound 0.8.
    rows = [
        {"set": "quotes", "acr": 11 / 6, "memorized": True, "success": True, "seconds": 4.0},
        {"set": "quotes", "acr": 11 / 6, "memorized": True, "success": True, "seconds": 3.0},
        {"set": "quotes", "acr": 12 / 15, "memorized": False, "success": False, "seconds": 2.0},
        # found, but the prompt (8 tokens) is longer than the 2-token target: in neither mean
        {"set": "found", "acr": 0.25, "memorized": False, "success": True, "seconds": 1.0},
        {"set": "found", "acr": 0.5, "memorized": False, "success": False, "seconds": 3.0},
    ]
    quotes, found = summarize(rows)
    assert quotes == {
        "set": "quotes",
        "targets": 3,
        "memorized": 2 / 3,
        "mean_acr_memorized": pytest.approx(11 / 6),
        "mean_bound": pytest.approx(0.8),
        "success": 2 / 3,
        "seconds_per_target": 3.0,  # (4 + 3 + 2) / 3
    }
    assert found["mean_acr_memorized"] is None and found["mean_bound"] == 0.5
    assert found["memorized"] == 0.0 and found["success"] == 0.5
    png = histogram(rows, tmp_path / "h.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
