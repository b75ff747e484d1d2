"""SAC: committee votes and buckets, the six sources and the policy, cross-fitting, cleanlab, hostile inputs."""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from selfevolve.errors import SelfEvolveError
from selfevolve.records import PreferencePair
from selfevolve.refine.committee import (
    CommitteeScores,
    CrossFitRewardModel,
    JudgeMember,
    MemberScores,
    RewardFunctionMember,
    build_member,
    score_committee,
)
from selfevolve.refine.preferences import load_pairs, split_dialogue
from selfevolve.refine.sac import SACConfig, audit, clean, cleanlab_flags, write_outputs


@dataclass
class Fixed:
    """A hand-made member: fixed P(chosen better) and absolute scores; counts its calls."""

    name: str
    prob: list[float]
    rewards: list[list[float]] | None = None
    calls: int = 0

    def cache_key(self) -> str:
        return self.name

    def score(self, pairs):
        self.calls += 1
        rewards = None if self.rewards is None else np.asarray(self.rewards, dtype=float)
        return MemberScores(np.asarray(self.prob, dtype=float), rewards)


def pairs_of(n: int) -> list[PreferencePair]:
    return [PreferencePair(f"q{i}", f"good {i}", f"bad {i}", i) for i in range(n)]


# Five pairs, four members. Columns: P(chosen better) per member.
#   pair 0: 0.9 0.8 0.7 0.9 -> v = 4 of 4 = 1.00 -> high, kept
#   pair 1: 0.9 0.6 0.3 0.2 -> v = 2 of 4 = 0.50 -> low; mean 0.5 -> subjective (rule), kept
#   pair 2: 0.1 0.2 0.1 0.2 -> v = 0 -> none; mean 0.15, P(rejected) 0.85 >= 0.6 -> mis-labelled, flipped
#   pair 3: 0.6 0.4 0.45 0.4 -> v = 1 of 4 = 0.25 -> low; both replies lowest in absolute score -> both bad, removed
#   pair 4: 0.9 0.9 0.1 0.6 -> v = 3 of 4 = 0.75 -> high (at the threshold), kept
PROBS = [
    [0.9, 0.8, 0.7, 0.9],
    [0.9, 0.6, 0.3, 0.2],
    [0.1, 0.2, 0.1, 0.2],
    [0.6, 0.4, 0.45, 0.4],
    [0.9, 0.9, 0.1, 0.6],
]
# Absolute scores (chosen, rejected) from the first member only; pair 3's two replies are the two lowest.
REWARDS = [[1.0, 0.5], [0.8, 0.7], [0.2, 0.9], [-2.0, -1.9], [1.2, 0.1]]


def committee(rewards=REWARDS) -> list[Fixed]:
    columns = np.asarray(PROBS).T
    return [Fixed(f"m{k}", list(columns[k]), rewards if k == 0 else None) for k in range(4)]


def test_hand_made_committee_votes_buckets_sources_and_actions():
    scores = score_committee(committee(), pairs_of(5))
    rows = audit(scores, pairs_of(5), SACConfig(bad_quantile=0.25))
    assert [r.votes for r in rows] == [4, 2, 0, 1, 3]
    assert [r.bucket for r in rows] == ["high", "low", "none", "low", "high"]
    assert [r.category for r in rows] == [None, "subjective", "mislabeled", "both_harmful", None]
    assert [r.action for r in rows] == ["keep", "keep", "flip", "remove", "keep"]
    # pair 3's replies rank 0 and 1 of 10 replies: quantiles 0/9 and 1/9, both below 0.25
    assert rows[3].evidence["reply_quantiles"] == [0.0, round(1 / 9, 4)]
    # pair 2: mean P = (0.1 + 0.2 + 0.1 + 0.2) / 4 = 0.15; margin = mean logit = (2 logit 0.1 + 2 logit 0.2) / 4
    assert rows[2].evidence["mean_p_chosen"] == 0.15
    expected = (2 * np.log(0.1 / 0.9) + 2 * np.log(0.2 / 0.8)) / 4
    assert rows[2].margin == pytest.approx(expected, abs=1e-4)
    assert rows[2].scores == {"m0": 0.1, "m1": 0.2, "m2": 0.1, "m3": 0.2}


def test_remove_policy_and_the_cleaned_set():
    loaded = load_pairs_from_records(
        [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs_of(5)]
    )
    flipped = clean(loaded, committee(), SACConfig(bad_quantile=0.25))
    assert [p.index for p in flipped.cleaned_pairs()] == [0, 1, 2, 4]
    assert flipped.cleaned_pairs()[2] == PreferencePair("q2", "bad 2", "good 2", 2)
    assert flipped.cleaned_records()[2] == {"prompt": "q2", "chosen": "bad 2", "rejected": "good 2"}
    removed = clean(loaded, committee(), SACConfig(bad_quantile=0.25, policy="remove"))
    assert [p.index for p in removed.cleaned_pairs()] == [0, 1, 4]
    assert removed.summary()["actions"] == {"keep": 3, "flip": 0, "remove": 2}


def load_pairs_from_records(records):
    from datasets import Dataset

    return load_pairs(Dataset.from_list(records))


def test_every_member_rejecting_is_flipped_only_when_confident():
    # v = 0 but mean P(chosen) = 0.42: P(rejected) = 0.58 < 0.6 -> not confident. Residual source by rule:
    # |0.42 - 0.5| = 0.08 >= 0.05 (not subjective), spread 0 < 0.2 (not criteria) -> different thresholds, kept
    members = [Fixed("a", [0.42]), Fixed("b", [0.42])]
    pairs = [PreferencePair("q", "x", "y", 0)]
    (row,) = audit(score_committee(members, pairs), pairs)
    assert (row.bucket, row.category, row.action) == ("none", "different_thresholds", "keep")


def test_judge_member_cancels_position_bias_and_counts_invalid_verdicts():
    @dataclass
    class Biased:  # always 0.8 for the first reply, whatever it is; nan for the question "nan"
        name: str = "biased"

        def prefer(self, triples, *, negated=False):
            return [float("nan") if q == "nan" else 0.8 for q, _, _ in triples]

    pairs = [PreferencePair("q", "x", "y", 0), PreferencePair("nan", "x", "y", 1)]
    result = JudgeMember(Biased()).score(pairs)
    assert result.prob[0] == pytest.approx(0.5)  # (0.8 + 1 - 0.8) / 2
    assert np.isnan(result.prob[1]) and result.invalid == 1

    @dataclass
    class Broken:
        name: str = "broken"

        def prefer(self, triples, *, negated=False):
            return [1.5 for _ in triples]

    with pytest.raises(SelfEvolveError, match="outside"):
        JudgeMember(Broken()).score(pairs)


def test_scores_are_cached_by_member_and_content(tmp_path):
    members = committee()
    score_committee(members, pairs_of(5), cache_dir=tmp_path)
    again = score_committee(members, pairs_of(5), cache_dir=tmp_path)
    assert [m.calls for m in members] == [1, 1, 1, 1]
    assert again.probs.tolist() == np.asarray(PROBS).tolist()
    score_committee(members, pairs_of(5)[::-1], cache_dir=tmp_path)  # other content: scored again
    assert members[0].calls == 2


@dataclass
class Quality:
    """A label-free featurizer that reads the planted quality number out of the reply ("... q=0.7")."""

    name: str = "quality"
    seen: list = field(default_factory=list)

    def __call__(self, prompts, replies):
        return np.array([[float(r.split("q=")[1]), 1.0] for r in replies])


def planted(n: int, flip_every: int, seed: int = 0) -> tuple[list[PreferencePair], np.ndarray]:
    rng = np.random.default_rng(seed)
    pairs, flipped = [], np.zeros(n, dtype=bool)
    for i in range(n):
        good, bad = rng.uniform(0.6, 1.0), rng.uniform(0.0, 0.4)  # a clear gap: confident verdicts
        pair = PreferencePair(f"q{i}", f"a q={good:.3f}", f"b q={bad:.3f}", i)
        if i % flip_every == 0:
            pair, flipped[i] = pair.flipped(), True
        pairs.append(pair)
    return pairs, flipped


def test_cross_fitting_never_scores_a_pair_with_a_head_that_saw_it():
    pairs, flipped = planted(60, flip_every=6)
    member = CrossFitRewardModel(Quality(), folds=5, seed=3)
    result = member.score(pairs)
    assert len(member.trace) == 5
    scored = np.concatenate([f.scored for f in member.trace])
    assert sorted(scored.tolist()) == list(range(60))  # every pair scored exactly once
    for fold in member.trace:
        assert not set(fold.scored.tolist()) & set(fold.trained_on.tolist())
        assert len(fold.scored) + len(fold.trained_on) == 60
    # the planted quality is learnt despite 1 in 6 flipped labels: every flipped pair is voted against
    assert (result.prob[flipped] < 0.5).all() and (result.prob[~flipped] > 0.5).all()


def test_sac_and_cleanlab_find_planted_flips():
    pairs, flipped = planted(60, flip_every=6)
    members = [CrossFitRewardModel(Quality(), folds=5, seed=s, name=f"q{s}") for s in range(3)]
    scores = score_committee(members, pairs)
    rows = audit(scores, pairs, SACConfig())
    flagged = np.array([r.category == "mislabeled" for r in rows])
    assert (flagged == flipped).all()
    issues = cleanlab_flags(scores.oof_mean())
    assert issues.dtype == bool and issues.shape == (60,)
    # cleanlab's per-class confidence thresholds are stricter on this set: it finds 7 of the 10 flips
    assert issues[flipped].mean() >= 0.6 and issues[~flipped].mean() <= 0.1


def test_reward_function_member_and_build_member_errors():
    member = build_member("tests.test_sac:length_reward")
    assert isinstance(member, RewardFunctionMember)
    pairs = [PreferencePair("q", "long reply", "short", 0)]
    # r = len: 10 vs 5 -> P = sigmoid(5)
    assert member.score(pairs).prob[0] == pytest.approx(1 / (1 + np.exp(-5)))
    for spec, needle in [
        ("crossfit:nope", "unknown cross-fitted"),
        ("rm:/no/such/folder", "not found"),
        ("tests.test_sac:missing", "cannot import"),
        ("what", "unknown member"),
    ]:
        with pytest.raises(SelfEvolveError, match=needle):
            build_member(spec)
    with pytest.raises(SelfEvolveError, match="too few"):
        CrossFitRewardModel(Quality(), folds=5).score(planted(6, 2)[0])


def length_reward(prompt: str, reply: str) -> float:
    return float(len(reply))


def test_reward_model_member_on_a_tiny_sequence_classifier(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from selfevolve.refine.committee import RewardModelMember
    from selfevolve.runtime.loading import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    member = build_member(f"rm:{tmp_path / 'rm'}")
    pairs = [PreferencePair("q", "yes", "no", 0), PreferencePair("q", "no", "yes", 1)]
    result = member.score(pairs)
    assert isinstance(member, RewardModelMember)
    assert result.prob[0] == pytest.approx(1 - result.prob[1], abs=1e-5)  # the same two replies, swapped
    assert result.rewards.shape == (2, 2)


# --------------------------------------------------------------------------------------------- inputs
def test_hh_dialogues_split_at_the_shared_prefix():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant: Sure, here."
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant: No."
    assert split_dialogue(chosen, rejected) == (
        "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant:",
        " Sure, here.",
        " No.",
    )
    # dialogues that part earlier: the prompt ends at the last assistant marker they share
    early = "\n\nHuman: hi\n\nAssistant: go away\n\nHuman: help?\n\nAssistant: No."
    assert split_dialogue(chosen, early)[0] == "\n\nHuman: hi\n\nAssistant:"
    with pytest.raises(ValueError, match="share no prompt"):
        split_dialogue("\n\nHuman: a", "\n\nHuman: b")


def hostile_file(path: Path) -> bytes:
    lines = [
        json.dumps({"prompt": "p0", "chosen": "good", "rejected": "bad"}).encode(),
        json.dumps({"prompt": "p1", "chosen": "good"}).encode(),  # missing field
        json.dumps({"prompt": "  ", "chosen": "good", "rejected": "bad"}).encode(),  # empty prompt
        json.dumps({"prompt": "p3", "chosen": "same", "rejected": "same"}).encode(),  # identical
        json.dumps({"prompt": "p4", "chosen": "x" * 1_000_000, "rejected": "bad"}).encode(),  # 1 MB reply
        b'{"prompt": "p5", "chosen": "\xff\xfe", "rejected": "bad"}',  # not UTF-8
        b"{not json",
        json.dumps({"prompt": "p7", "chosen": 3, "rejected": "bad"}).encode(),  # not text
        json.dumps({"prompt": "p8", "chosen": "fine", "rejected": "worse"}).encode(),
    ]
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(data)
    return data


def test_hostile_inputs_are_reported_skips_never_silent_drops(tmp_path):
    path = tmp_path / "prefs.jsonl"
    data = hostile_file(path)
    loaded = load_pairs(path)
    assert [p.index for p in loaded.pairs] == [0, 8]
    assert [(s.index, s.reason) for s in loaded.skipped] == [
        (1, "missing field 'rejected'"),
        (2, "empty prompt"),
        (3, "identical chosen and rejected"),
        (4, "reply over 100000 characters"),
        (5, "not UTF-8"),
        (6, "not valid JSON"),
        (7, "field 'chosen' is not text"),
    ]
    report = loaded.report()
    assert "2 pairs" in report and "skipped 7" in report and "1 not UTF-8 (line 5)" in report
    with pytest.raises(SelfEvolveError) as err:
        load_pairs(path, strict=True)
    assert "line 1: missing field 'rejected'" in str(err.value) and "\n" not in str(err.value)
    assert path.read_bytes() == data  # the input is never modified


def test_unusable_sources_are_one_line_errors(tmp_path):
    with pytest.raises(SelfEvolveError, match="not found"):
        load_pairs(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(SelfEvolveError, match="no records"):
        load_pairs(tmp_path / "empty.jsonl")
    (tmp_path / "wrong.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(SelfEvolveError, match=r"no usable pair .*missing field"):
        load_pairs(tmp_path / "wrong.jsonl")
    gz = tmp_path / "hh.jsonl.gz"
    with gzip.open(gz, "wt") as handle:
        handle.write(
            json.dumps({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"})
        )
    loaded = load_pairs(gz)
    assert loaded.shape == "dialogues" and loaded.pairs[0] == PreferencePair(
        "\n\nHuman: q\n\nAssistant:", " a", " b", 0
    )


def test_outputs_keep_the_input_shape_and_account_for_every_line(tmp_path):
    path = tmp_path / "hh.jsonl"
    records = [
        {
            "chosen": f"\n\nHuman: q{i}\n\nAssistant: good {i}",
            "rejected": f"\n\nHuman: q{i}\n\nAssistant: bad {i}",
            "id": i,
        }
        for i in range(5)
    ]
    lines = [json.dumps(r) for r in records]
    lines.insert(2, '{"chosen": "x"}')  # line 2: missing field; the pairs are on lines 0, 1, 3, 4, 5
    path.write_text("\n".join(lines) + "\n")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_pairs(path)
    result = clean(loaded, committee(), SACConfig(bad_quantile=0.25))
    paths = write_outputs(result, tmp_path / "out")
    audit_rows = [json.loads(x) for x in paths["audit"].read_text().splitlines()]
    assert [r["index"] for r in audit_rows] == [0, 1, 2, 3, 4, 5]
    assert [r["action"] for r in audit_rows] == ["keep", "keep", "remove", "flip", "remove", "keep"]
    assert audit_rows[2]["bucket"] == "invalid" and audit_rows[2]["evidence"] == {
        "skipped": "missing field 'rejected'"
    }
    cleaned = [json.loads(x) for x in paths["cleaned"].read_text().splitlines()]
    assert [c["id"] for c in cleaned] == [0, 1, 2, 4]
    assert cleaned[2] == {**records[2], "chosen": records[2]["rejected"], "rejected": records[2]["chosen"]}
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_config_is_checked():
    with pytest.raises(SelfEvolveError, match="no_agreement < high_agreement"):
        SACConfig(no_agreement=0.8, high_agreement=0.5)
    with pytest.raises(SelfEvolveError, match="policy"):
        SACConfig(policy="burn")


def test_committee_scores_mean_ignores_invalid_verdicts():
    scores = CommitteeScores(
        ["a", "b"], np.array([[0.2, np.nan], [np.nan, np.nan]]), np.full((2, 2, 2), np.nan), {}
    )
    assert scores.oof_mean().tolist() == [0.2, 0.5]


def test_the_sac_loop_step_flips_and_records_its_audit(tmp_path):
    from selfevolve.loop import STEPS
    from selfevolve.loop.state import LoopState
    from selfevolve.loop.steps.refine import PREFERENCE, SAC_AUDIT
    from selfevolve.store import Experience, ExperienceStore

    with ExperienceStore(tmp_path / "store.sqlite") as store:
        run = store.start_run("unit")
        rows = [("q0", "a long helpful reply", "no"), ("q1", "no", "a long helpful reply")]  # q1 mis-labelled
        ids = store.record_step(
            run,
            1,
            "acquire",
            "preferences",
            experiences=[
                Experience(run, PREFERENCE, q, c, "acquire", metadata={"rejected": r}) for q, c, r in rows
            ],
        )
        state = LoopState(None, 1, store, run, tmp_path, seed=0)
        step = STEPS["sac"](members=("tests.test_sac:length_reward",))
        result = step.run(state)
        assert [(d.experience_id, d.kept, d.reason) for d in result.decisions] == [
            (ids[0], True, "high agreement: keep"),
            (ids[1], False, "none agreement, mislabeled: flip"),
        ]
        audits = [e for e in result.experiences if e.task == SAC_AUDIT]
        assert [(e.parent_id, e.metadata["action"], e.phase) for e in audits] == [
            (ids[0], "keep", "refine"),
            (ids[1], "flip", "refine"),
        ]
        store.record_step(run, 1, "refine", "sac", experiences=result.experiences, decisions=result.decisions)
        kept = state.kept(PREFERENCE)
        assert [(e.prompt, e.response, e.metadata["rejected"]) for e in kept] == [
            ("q0", "a long helpful reply", "no"),
            ("q1", "a long helpful reply", "no"),
        ]


def first_is_better(question: str, a: str, b: str, *, negated: bool = False) -> float:
    """A judge with a pure position bias: 0.9 for whichever reply comes first."""
    return 0.9


def test_a_pairwise_judge_spec_becomes_a_member_whose_position_bias_cancels(tmp_path):
    member = build_member("judge:tests.test_sac:first_is_better")
    assert isinstance(member, JudgeMember)
    pairs = pairs_of(3)
    scores = score_committee([member], pairs, cache_dir=tmp_path)
    assert scores.probs[:, 0].tolist() == pytest.approx([0.5, 0.5, 0.5])  # (0.9 + 1 - 0.9) / 2
    assert len(list(tmp_path.glob("judge-tests.test_sac_first_is_better-*.json"))) == 1


def test_lm_hidden_state_features_feed_a_cross_fitted_member(tiny_llama):
    from selfevolve.refine.committee import HiddenStateFeaturizer

    featurizer = HiddenStateFeaturizer(tiny_llama, max_tokens=32)
    features = featurizer(["\n\nHuman: hi\n\nAssistant:"] * 2, [" hello there", " go away"])
    assert features.shape == (2, tiny_llama.model.config.hidden_size)
    assert not np.allclose(features[0], features[1])
    member = build_member("crossfit:lm", folds=2, model=tiny_llama)
    result = member.score(pairs_of(4))
    assert result.prob.shape == (4,) and np.isfinite(result.prob).all()


def test_the_sac_loop_step_reads_a_file_and_stores_the_cleaned_pairs(tmp_path):
    from selfevolve.loop import STEPS
    from selfevolve.loop.state import LoopState
    from selfevolve.loop.steps.refine import PREFERENCE, SAC_AUDIT
    from selfevolve.store import ExperienceStore

    data = tmp_path / "prefs.jsonl"
    records = [{"prompt": "q0", "chosen": "a long helpful reply", "rejected": "no"}]
    records.append({"prompt": "q1", "chosen": "no", "rejected": "a long helpful reply"})
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    with pytest.raises(SelfEvolveError, match="does not exist"):
        STEPS["sac"](data=str(tmp_path / "missing.jsonl"))
    with ExperienceStore(tmp_path / "store.sqlite") as store:
        run = store.start_run("unit")
        state = LoopState(None, 1, store, run, tmp_path, seed=0)
        result = STEPS["sac"](data=str(data), members=("tests.test_sac:length_reward",), policy="remove").run(
            state
        )
        assert result.decisions == []  # nothing stored to decide on: the file is the provenance
        audits = [e for e in result.experiences if e.task == SAC_AUDIT]
        assert [(e.metadata["index"], e.metadata["action"]) for e in audits] == [(0, "keep"), (1, "remove")]
        kept = [e for e in result.experiences if e.task == PREFERENCE]
        assert [(e.prompt, e.response) for e in kept] == [("q0", "a long helpful reply")]


def test_a_source_judge_sorts_the_residual_sources_with_its_evidence(tiny_llama):
    from selfevolve.refine.sac import RESIDUAL_OPTIONS, RESIDUAL_QUESTION, backend_source_judge

    judge = backend_source_judge(tiny_llama)
    pair = PreferencePair("\n\nHuman: hi\n\nAssistant:", " hello", " bye", 0)
    probs = judge(pair, RESIDUAL_QUESTION, RESIDUAL_OPTIONS)
    assert len(probs) == 3 and sum(probs) == pytest.approx(1.0)

    def criteria(pair, question, options):  # a scripted judge: always the second option
        return [0.1, 0.8, 0.1][: len(options)]

    scores = score_committee(committee(), pairs_of(5))
    rows = audit(scores, pairs_of(5), SACConfig(bad_quantile=0.25), source_judge=criteria)
    assert rows[1].category == "different_criteria"  # the low-agreement pair, by the judge this time
    assert rows[1].evidence["judge"] == {
        "subjective": 0.1,
        "different_criteria": 0.8,
        "different_thresholds": 0.1,
    }
    assert rows[3].category == "both_wrong"  # both bad; the judge's second option is "both wrong"
    assert rows[2].category == "mislabeled"  # measurable evidence decides before any judge
