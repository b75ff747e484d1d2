"""SELF-PARAM on tiny random models: losses against hand computations, the teacher cache, LoRA merging,
exact resume, the knowledge generator, SQuAD scoring, and hostile inputs on every input surface."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn import functional as F

from selfevolve.acquire.knowledge import (
    SIZES,
    fictional_knowledge,
    load_documents,
    load_questions,
    write_documents,
    write_questions,
)
from selfevolve.acquire.synthesize import (
    SynthesisConfig,
    clean_question,
    clean_statement,
    support,
    synthesize,
)
from selfevolve.config import load_config
from selfevolve.errors import SelfEvolveError
from selfevolve.evaluate.qa import (
    answer_questions,
    answer_recall,
    exact_match,
    perplexity,
    score_answers,
    token_f1,
)
from selfevolve.loop.recipes import InjectConfig
from selfevolve.prompts import normalize_answer, qa_prompt, split_passages
from selfevolve.records import Document, QAItem, SynthesizedItem
from selfevolve.runtime import load_model
from selfevolve.store import ExperienceStore
from selfevolve.update.losses import ForwardKLLoss, TopKForwardKLLoss, forward_kl, topk_forward_kl
from selfevolve.update.selfparam import (
    DistillationObjective,
    SelfParamConfig,
    TeacherTargets,
    build_teacher_cache,
    inject,
    inject_sequential,
    qa_examples,
    rounds_of,
    text_examples,
)
from selfevolve.update.sft import SFTConfig, finetune
from selfevolve.update.training import TrainingConfig, epoch_order, train

DOC = Document(
    "d0", "Sinun Draebaer", "Sinun Draebaer is an astronomer. Sinun was born in 1973 in Libirstead."
)
ITEMS = [
    SynthesizedItem("d0", "When was Sinun Draebaer born?", "Sinun Draebaer was born in 1973.", "given", 1.0),
    SynthesizedItem("d0", "What is Sinun Draebaer's job?", "Sinun Draebaer is an astronomer.", "given", 1.0),
    SynthesizedItem("d0", "Where was Sinun born?", "In Libirstead.", "question", 1.0),
    SynthesizedItem(
        "d0", "Tell me a fact about Sinun Draebaer.", "Sinun was born in Libirstead.", "statement", 1.0
    ),
]


def fresh(name: str = "tiny-random-llama"):
    return load_model(name, seed=0)


def weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.model.named_parameters()}


# ---- losses -------------------------------------------------------------------------------------------------


def test_forward_kl_matches_hand_computation():
    # Token 1: teacher p = (0.7, 0.2, 0.1), student logits 0 -> q = (1/3, 1/3, 1/3).
    # KL = 0.7 ln(0.7·3) + 0.2 ln(0.2·3) + 0.1 ln(0.1·3) = 0.7 ln 2.1 + 0.2 ln 0.6 + 0.1 ln 0.3 ≈ 0.3018.
    # Token 2 is padding (mask False) and must not count, whatever its values.
    teacher = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.2, 0.2, 0.6]]]))  # (1, 2, 3)
    student = torch.tensor([[[0.0, 0.0, 0.0], [9.0, -9.0, 0.0]]])  # (1, 2, 3)
    mask = torch.tensor([[True, False]])
    expected = 0.7 * math.log(2.1) + 0.2 * math.log(0.6) + 0.1 * math.log(0.3)
    assert forward_kl(student, teacher, mask).item() == pytest.approx(expected, rel=1e-6)
    assert ForwardKLLoss()(student, teacher, mask).item() == pytest.approx(expected, rel=1e-6)


def test_topk_kl_matches_hand_computation_and_full_kl_at_k_equal_v():
    # Top-1 of teacher (0.7, 0.2, 0.1) is token 0; the rest bucket holds 0.3 for the teacher and 2/3 for the
    # uniform student: KL = 0.7 ln(0.7·3) + 0.3 ln(0.3 / (2/3)) = 0.7 ln 2.1 + 0.3 ln 0.45 ≈ 0.2798.
    teacher = torch.log(torch.tensor([[[0.7, 0.2, 0.1]]]))
    student = torch.zeros(1, 1, 3)
    mask = torch.ones(1, 1, dtype=torch.bool)
    values, ids = teacher.topk(1, dim=-1)
    expected = 0.7 * math.log(2.1) + 0.3 * math.log(0.45)
    assert topk_forward_kl(student, values, ids, mask).item() == pytest.approx(expected, rel=1e-5)
    values, ids = teacher.topk(3, dim=-1)
    full = forward_kl(student, teacher, mask).item()
    assert TopKForwardKLLoss()(student, values, ids, mask).item() == pytest.approx(full, abs=1e-6)


def test_kl_loss_on_a_tiny_model_matches_a_loop_over_the_vocabulary(tiny_llama):
    examples = qa_examples(tiny_llama, ITEMS[:2], [DOC])
    cache = build_teacher_cache(tiny_llama, examples)
    objective = DistillationObjective(examples, cache)
    with torch.no_grad():
        loss, tokens = objective(tiny_llama, [0, 1])
    # By hand: for every target token, sum_v p_t(v) (log p_t(v) - log p_s(v)) with plain Python floats.
    total, count = 0.0, 0
    for example, cached in zip(examples, cache):
        student = tiny_llama.continuation_logits([example.student_prompt], [example.target_ids]).logits[0]
        student = torch.log_softmax(student.double(), -1)
        for t in range(len(example.target_ids)):
            p_t = cached.logprobs[t].double()
            total += sum(math.exp(a) * (a - b) for a, b in zip(p_t.tolist(), student[t].tolist()))
            count += 1
    assert tokens == count
    assert loss.item() == pytest.approx(total / count, rel=1e-3)
    assert loss.item() > 0


def test_teacher_cache_is_unbatched_teacher_logprobs(tiny_qwen2):
    examples = qa_examples(tiny_qwen2, ITEMS, [DOC])
    cache = build_teacher_cache(tiny_qwen2, examples, batch_size=3)
    topk = build_teacher_cache(tiny_qwen2, examples, top_k=5, batch_size=2)
    for example, full, top in zip(examples, cache, topk):
        alone = tiny_qwen2.continuation_logits([example.teacher_prompt], [example.target_ids]).logits[0]
        expected = torch.log_softmax(alone.float(), -1)  # (T, V)
        assert full.logprobs.shape == expected.shape and full.logprobs.dtype == torch.float16
        torch.testing.assert_close(full.logprobs.float(), expected, atol=2e-2, rtol=1e-3)
        values, ids = expected.topk(5, dim=-1)
        torch.testing.assert_close(top.logprobs.float(), values, atol=2e-2, rtol=1e-3)
        assert (top.ids.long() == ids).float().mean() > 0.95  # ties in float16 may swap neighbours
    # The teacher sees the document, the student does not: the prompts differ, the targets are shared.
    assert DOC.text in str(examples[0].teacher_prompt) and DOC.text not in str(examples[0].student_prompt)


def test_regularizer_is_zero_for_the_unchanged_model(tiny_llama):
    texts = ["The sun rises in the east and sets in the west.", "Water boils at one hundred degrees."]
    examples = text_examples(tiny_llama, texts)
    cache = build_teacher_cache(tiny_llama, examples, top_k=8)
    with torch.no_grad():
        loss, _ = DistillationObjective(examples, cache)(tiny_llama, [0, 1])
    assert abs(loss.item()) < 1e-2  # float16 cache rounding only


# ---- training -----------------------------------------------------------------------------------------------


def test_lora_injection_merges_into_the_same_parameters_and_changes_them():
    model = fresh()
    before = weights(model)
    config = SelfParamConfig(train=TrainingConfig(epochs=2, batch_size=2, learning_rate=1e-2))
    result = inject(model, [DOC], ITEMS, config)
    after = weights(model)
    assert set(after) == set(before)  # no lora_A / lora_B left: merged, no extra parameters
    assert sum(p.numel() for p in after.values()) == sum(p.numel() for p in before.values())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert result.train.steps == 4 and all(math.isfinite(x) for x in result.train.losses)
    assert result.summary()["synthesized_items"] == len(ITEMS)


def test_full_finetuning_with_topk_and_regularizer_changes_every_trained_matrix():
    model = fresh("tiny-random-qwen2")
    before = weights(model)
    config = SelfParamConfig(
        train=TrainingConfig(epochs=1, batch_size=4, learning_rate=1e-3, lora=False, warmup_ratio=0.0),
        top_k=16,
        regularizer_weight=0.5,
    )
    inject(model, [DOC], ITEMS, config, regularizer_texts=["Paris is the capital of France."])
    after = weights(model)
    assert set(after) == set(before)
    # full fine-tuning trains every parameter (embeddings, every projection and bias, norms, the LM head)
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert unchanged == []


def test_kl_training_lowers_the_kl():
    # A random model hardly uses its context, so the teacher here is synthetic: sharp on each target token.
    model = fresh()
    examples = qa_examples(model, ITEMS, [DOC])
    vocab = len(model.tokenizer)
    cache = [
        TeacherTargets(
            torch.log_softmax(8.0 * F.one_hot(torch.tensor(e.target_ids), vocab).float(), -1).half(), None
        )
        for e in examples
    ]
    objective = DistillationObjective(examples, cache)
    with torch.no_grad():
        start, _ = objective(model, list(range(len(ITEMS))))
    train(
        model,
        list(range(len(ITEMS))),
        objective,
        TrainingConfig(epochs=8, batch_size=4, learning_rate=1e-2, lora=False),
    )
    with torch.no_grad():
        end, _ = objective(model, list(range(len(ITEMS))))
    assert end.item() < 0.7 * start.item()


class Crash(Exception):
    pass


def test_resume_from_checkpoint_continues_identically(tmp_path):
    config = TrainingConfig(epochs=2, batch_size=2, learning_rate=1e-2, save_every=1)

    def run(model, folder, *, stop_after=None, resume=False):
        examples = qa_examples(model, ITEMS, [DOC])
        objective = DistillationObjective(examples, build_teacher_cache(model, examples))

        def on_step(step, loss):
            if stop_after is not None and step == stop_after:
                raise Crash

        return train(
            model,
            list(range(len(ITEMS))),
            objective,
            config,
            checkpoint_dir=folder,
            resume=resume,
            on_step=on_step,
        )

    straight = fresh()
    losses = run(straight, tmp_path / "a").losses
    interrupted = fresh()
    with pytest.raises(Crash):
        run(interrupted, tmp_path / "b", stop_after=3)
    resumed = fresh()
    result = run(resumed, tmp_path / "b", resume=True)
    assert result.resumed_from == 2 and result.steps == 2
    assert result.losses == pytest.approx(losses[2:], rel=1e-5)
    for name, value in weights(straight).items():
        torch.testing.assert_close(weights(resumed)[name], value, atol=1e-6, rtol=1e-5)


def test_epoch_order_is_a_seeded_permutation():
    assert epoch_order(10, 0, 0) == epoch_order(10, 0, 0)
    assert epoch_order(10, 0, 0) != epoch_order(10, 1, 0)
    assert sorted(epoch_order(10, 3, 7)) == list(range(10))


@pytest.mark.parametrize("target", ["qa", "document"])
def test_sft_baselines_train(target):
    model = fresh()
    before = weights(model)
    config = SFTConfig(train=TrainingConfig(epochs=1, batch_size=2, learning_rate=1e-2), target=target)
    result = finetune(model, config, items=ITEMS, documents=[DOC])
    assert result.steps >= 1 and result.tokens > 0
    assert set(weights(model)) == set(before)
    assert any(not torch.equal(before[n], p) for n, p in weights(model).items())


def test_synthesis_records_provenance_and_sequential_injection_runs(tmp_path):
    model = fresh("tiny-random-qwen2")  # the random Llama answers greedily with blank lines only
    knowledge = fictional_knowledge(2, seed=3)
    store = ExperienceStore(tmp_path / "store.db")
    run_id = store.start_run("test", {})
    synthesis = SynthesisConfig(questions_per_document=2, statements_per_document=1, min_support=0.0)
    items = synthesize(
        model, knowledge.documents, synthesis, given_questions=knowledge.train, store=store, run_id=run_id
    )
    config = SelfParamConfig(
        train=TrainingConfig(epochs=1, batch_size=4), mode="sequential", rounds=2, top_k=4
    )
    seen_rounds = []
    results = inject_sequential(
        model,
        knowledge.documents,
        items,
        config,
        out_dir=tmp_path / "out",
        after_round=lambda k, seen, result: seen_rounds.append((k, [d.id for d in seen])),
    )
    assert seen_rounds == [(0, ["doc0000"]), (1, ["doc0000", "doc0001"])]
    assert all(r.train.steps > 0 for r in results)
    assert [{i.doc_id for i in r.items} for r in results] == [{"doc0000"}, {"doc0001"}]
    stored = store.query(run_id=run_id)
    assert stored and all(e.phase == "acquire" and e.method == "self-param-synthesis" for e in stored)
    assert {e.metadata["doc_id"] for e in stored} == {"doc0000", "doc0001"}
    assert (tmp_path / "out" / "round01" / "checkpoint" / "progress.json").is_file()


def test_rounds_split_documents_evenly():
    docs = fictional_knowledge(10).documents
    assert [len(r) for r in rounds_of(docs, 5)] == [2] * 5
    assert [len(r) for r in rounds_of(docs[:7], 3)] == [3, 2, 2]
    with pytest.raises(SelfEvolveError, match="into 11 rounds"):
        rounds_of(docs, 11)


# ---- knowledge sets -----------------------------------------------------------------------------------------


def test_fictional_knowledge_is_deterministic_with_disjoint_questions():
    one, two, other = (
        fictional_knowledge("batch", seed=1),
        fictional_knowledge(10, seed=1),
        fictional_knowledge(10, 2),
    )
    assert one == two and one != other
    assert len(one.documents) == SIZES["batch"] == 10
    assert len({d.id for d in one.documents}) == 10 and len({d.title for d in one.documents}) == 10
    assert not {q.question for q in one.train} & {q.question for q in one.test}
    assert len(one.train) == len(one.test)
    texts = {d.id: d.text for d in one.documents}
    for item in one.test:
        assert item.answers[0] in texts[item.doc_id]  # the gold answer is stated in its document
    assert one.subset(["doc0003"]).documents[0].id == "doc0003"
    assert {q.doc_id for q in one.subset(["doc0003"]).test} == {"doc0003"}


def test_documents_and_questions_round_trip(tmp_path):
    knowledge = fictional_knowledge(3)
    assert load_documents(write_documents(knowledge.documents, tmp_path / "d.jsonl")) == list(
        knowledge.documents
    )
    assert load_questions(write_questions(knowledge.test, tmp_path / "q.jsonl")) == list(knowledge.test)
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("Notes on Vorlak\nVorlak is a city.\n")
    (tmp_path / "txt" / "b.txt").write_text("Single line document about things.")
    docs = load_documents(tmp_path / "txt")
    assert [(d.id, d.title) for d in docs] == [("a", "Notes on Vorlak"), ("b", "b")]


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("empty.txt", "   \n", "is empty"),
        ("binary.txt", b"\xff\xfe\x00garbage\x80", "not UTF-8"),
        ("bad.jsonl", '{"text": "ok"}\n{not json\n', "bad.jsonl line 2: not valid JSON"),
        ("list.jsonl", "[1, 2]\n", "not a JSON object"),
        ("notext.jsonl", '{"title": "x"}\n', "field 'text' must be a non-empty string"),
        ("blank.jsonl", '{"text": "   "}\n', "field 'text'"),
        ("none.jsonl", "\n\n", "holds no documents"),
        ("dupes.jsonl", '{"id": "a", "text": "x y"}\n{"id": "a", "text": "z"}\n', "duplicate document id"),
        ("doc.pdf", "%PDF", "use a .txt file"),
    ],
)
def test_hostile_documents_give_clear_errors(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(SelfEvolveError, match=needle):
        load_documents(path)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"question": "q?"}\n', "needs 'answer'"),
        ('{"question": "q?", "answers": []}\n', "needs 'answer'"),
        ('{"question": "q?", "answers": ["", 3]}\n', "needs 'answer'"),
        ('{"answer": "a"}\n', "field 'question'"),
        ('{"question": "q?", "answer": "a", "doc_id": 5}\n', "'doc_id' must be a string"),
        ("nonsense\n", "not valid JSON"),
        ("", "holds no questions"),
    ],
)
def test_hostile_question_files_give_clear_errors(tmp_path, content, needle):
    path = tmp_path / "q.jsonl"
    path.write_text(content)
    with pytest.raises(SelfEvolveError, match=needle):
        load_questions(path)


def test_hostile_arguments_give_clear_errors(tmp_path):
    with pytest.raises(SelfEvolveError, match="does not exist"):
        load_documents(tmp_path / "missing.txt")
    with pytest.raises(SelfEvolveError, match=r"no \.txt files"):
        load_documents(tmp_path)
    with pytest.raises(SelfEvolveError, match="unknown knowledge set size 'huge'"):
        fictional_knowledge("huge")
    with pytest.raises(SelfEvolveError, match="positive integer"):
        fictional_knowledge(0)
    with pytest.raises(SelfEvolveError, match="unknown document id"):
        fictional_knowledge(2).subset(["nope"])
    model = fresh()
    with pytest.raises(SelfEvolveError, match="no documents to inject"):
        inject(model, [], ITEMS)
    with pytest.raises(SelfEvolveError, match="needs unrelated text"):
        inject(model, [DOC], ITEMS, SelfParamConfig(regularizer_weight=1.0))
    with pytest.raises(SelfEvolveError, match="no synthesized items"):
        inject(model, [DOC], [])
    with pytest.raises(SelfEvolveError, match=r"document id\(s\) \['other'\]"):
        inject(model, [DOC], [*ITEMS, SynthesizedItem("other", "q?", "a.", "question", 1.0)])
    with pytest.raises(SelfEvolveError, match="pass both store and run_id"):
        synthesize(model, [DOC], store=ExperienceStore(tmp_path / "s.db"))
    with pytest.raises(SelfEvolveError, match="unknown document id"):
        synthesize(model, [DOC], given_questions=[QAItem("other", "q?", ("a",))])
    with pytest.raises(SelfEvolveError, match="nothing to train on"):
        train(model, [], lambda s, b: (torch.zeros(()), 0), TrainingConfig())
    with pytest.raises(SelfEvolveError, match="2 questions but 1 predictions"):
        score_answers([QAItem("d", "q?", ("a",))] * 2, ["a"])


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["learning_rate=1e-3"], "unknown config key"),
        (["train.lr=1e-3"], "unknown config key.*train.lr.*valid keys.*train.learning_rate"),
        (["train.epochs=0"], "train.epochs must be at least 1"),
        (["mode=parallel"], "not one of"),
        (["top_k=-1"], "top_k must be 0"),
        (["synthesis.min_support=2"], "min_support must be in"),
        (
            [
                "synthesis.questions_per_document=0",
                "synthesis.statements_per_document=0",
                "synthesis.document_sentences=false",
            ],
            "writes nothing",
        ),
        (["train.mixed_precision=fp8"], "not one of"),
    ],
)
def test_bad_config_keys_and_values_are_rejected(overrides, needle):
    with pytest.raises(SelfEvolveError, match=needle):
        load_config(InjectConfig, None, overrides)


def test_config_layers_nested_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 2\n  lora: false\ntop_k: 32\n")
    config = load_config(InjectConfig, path, ["train.epochs=3", "synthesis.questions_per_document=5"])
    assert (config.train.epochs, config.train.lora, config.top_k) == (3, False, 32)
    assert config.synthesis.questions_per_document == 5 and config.train.learning_rate is None
    assert config.train.peak_learning_rate == 3e-5  # full fine-tuning's default


# ---- synthesis filters --------------------------------------------------------------------------------------


def test_question_and_statement_cleaning():
    assert clean_question("Question: What did Sinun invent? The answer is") == "What did Sinun invent?"
    assert clean_question('"Where was Sinun born?"') == "Where was Sinun born?"
    assert clean_question("Sinun is a man.") is None and clean_question("Why?") is None
    assert clean_statement("Sinun was born in 1973. He is tall.") == "Sinun was born in 1973."
    assert clean_statement("Is Sinun tall?") is None and clean_statement("Yes.") is None
    assert support("Sinun was born in 1973.", DOC.text) == 1.0
    assert support("Sinun was born in Paris.", DOC.text) == pytest.approx(2 / 3)
    assert support("the of a", DOC.text) == 0.0


# ---- scoring ------------------------------------------------------------------------------------------------


def test_squad_f1_and_exact_match_on_known_examples():
    # Examples in the style of the official SQuAD v1.1 evaluation script.
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert exact_match("the Denver Broncos", "Denver Broncos") == 1.0
    assert token_f1("Denver Broncos", "Denver Broncos") == 1.0
    # prediction "Denver Broncos won": precision 2/3, recall 1 -> F1 = 2·(2/3)·1 / (2/3 + 1) = 0.8
    assert token_f1("Denver Broncos won", "Denver Broncos") == pytest.approx(0.8)
    # "Santa Clara, California" vs "Levi's Stadium in the San Francisco Bay Area at Santa Clara, California":
    # common = {santa, clara, california} = 3; precision 3/3, recall 3/11 -> F1 = 2·(3/11) / (1 + 3/11) = 6/14
    gold = "Levi's Stadium in the San Francisco Bay Area at Santa Clara, California"
    assert token_f1("Santa Clara, California", gold) == pytest.approx(6 / 14)
    assert token_f1("Carolina Panthers", "Denver Broncos") == 0.0 and token_f1("", "") == 1.0
    assert answer_recall("He was born in 1973, in spring.", "1973") == 1.0
    assert answer_recall("He was born in 19735.", "1973") == 0.0
    assert answer_recall("anything", "the") == 0.0  # a gold answer that normalizes to nothing never matches
    result = score_answers([QAItem("d", "q?", ("1973", "in 1973"))], ["It was in 1973."])
    assert result.exact_match == 0.0 and result.recall == 1.0
    # best gold "in 1973": 2 of the 4 predicted tokens match, recall 1 -> F1 = 2·(1/2)·1 / (1/2 + 1) = 2/3
    assert result.f1 == pytest.approx(2 / 3)


def test_answering_and_perplexity_run_on_a_tiny_model(tiny_llama):
    items = [QAItem("d0", "When was Sinun born?", ("1973",))]
    closed = answer_questions(tiny_llama, items, max_new_tokens=4)
    open_book = answer_questions(tiny_llama, items, [DOC.text], max_new_tokens=4)
    assert 0 <= closed.f1 <= 1 and len(open_book.rows) == 1
    assert qa_prompt("q?", "ctx")[0] == {"role": "system", "content": "ctx"}
    ppl = perplexity(tiny_llama, ["Some general text about the world.", "More text."])
    assert 1 < ppl < 2 * len(tiny_llama.tokenizer)  # a random model is near uniform
    assert split_passages("A b. C d. E f.", max_words=4) == ["A b. C d.", "E f."]


def test_report_rows_are_json_serialisable():
    result = score_answers([QAItem("d", "When?", ("1973",))], ["It was in 1973."])
    # prediction tokens {it, was, in, 1973}, gold {1973}: precision 1/4, recall 1 -> F1 = 2·(1/4)/(5/4) = 0.4
    expected = {
        "doc_id": "d",
        "question": "When?",
        "answers": ["1973"],  # a list, not the item's tuple: JSON gives back what was stored
        "prediction": "It was in 1973.",
        "f1": pytest.approx(0.4),
        "exact_match": 0.0,
        "recall": 1.0,
    }
    assert json.loads(json.dumps(result.rows)) == result.rows == [expected]
