"""KV-cache compression on tiny random Llama and Qwen2: exactness, budgets, windows, padding, positions, hooks."""

from __future__ import annotations

import contextlib

import pytest
import torch

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.compat import CACHE_NAMES, cache_in, cache_kwarg
from selfevolve.runtime.kv import (
    FullKV,
    RandomKV,
    SnapKV,
    StreamingLLM,
    decode,
    extend,
    parse_kv_spec,
    prefill,
)
from selfevolve.runtime.kv.base import KVReport, attention_layers

TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps by the warm fire. "
PROMPTS = [TEXT * 3, "a short prompt", TEXT[:60]]  # 249, 14 and 60 byte tokens (no BOS)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine each thread handoff costs time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(lm, prompts):
    """Left-padded ids and mask (B, T) of raw-text prompts."""
    return lm._left_pad([lm.encode(p) for p in prompts])


def tokens(completions):
    return [c.token_ids for c in completions]


@pytest.mark.parametrize(
    "policy",
    [SnapKV(budget=10_000), SnapKV(budget=1.0), FullKV(), StreamingLLM(4, 10_000), RandomKV(budget=10_000)],
    ids=["snapkv-count", "snapkv-ratio", "full", "streaming", "random"],
)
def test_budget_at_least_the_prompt_is_token_exact(tiny_model, policy):
    expected = tokens(tiny_model.generate(PROMPTS, max_new_tokens=10))
    assert tokens(tiny_model.generate(PROMPTS, max_new_tokens=10, kv_compression=policy)) == expected


def test_rows_within_the_budget_match_the_full_cache_in_a_padded_batch(tiny_model):
    # budget 100 < padded width 249: the long row is compressed, the two short rows keep every real token
    # plus padding slots, through the gather and the rewritten 2D mask; their outputs must not change.
    policy = SnapKV(budget=100, window=8)
    expected = tokens(tiny_model.generate(PROMPTS, max_new_tokens=10))
    got = tokens(tiny_model.generate(PROMPTS, max_new_tokens=10, kv_compression=policy))
    assert got[1:] == expected[1:]
    ids, mask = batch(tiny_model, PROMPTS)
    loop = decode(tiny_model.model, prefill(tiny_model.model, ids, mask, policy), 10)
    assert [row[: len(g)] for row, g in zip(loop.tolist(), got, strict=True)] == got


def test_a_padded_batch_decodes_as_each_prompt_alone(tiny_model):
    policy = SnapKV(budget=40, window=8)
    together = tokens(tiny_model.generate(PROMPTS, max_new_tokens=8, kv_compression=policy))
    assert policy.last_report.last.kept_tokens == 40  # the hooks really compressed the batch's prefill
    alone = []
    for prompt in PROMPTS:
        alone += tokens(tiny_model.generate([prompt], max_new_tokens=8, kv_compression=policy))
        width = len(tiny_model.encode(prompt))
        assert policy.last_report.last.kept_tokens == min(40, width)  # 249 -> 40; 14 and 60 -> 14 and 40
    assert together == alone


def test_the_report_records_each_prefill_with_exact_bytes(tiny_model):
    model, config = tiny_model.model, tiny_model.model.config
    ids, mask = batch(tiny_model, [TEXT * 2])  # one row, T = 166 byte tokens
    with SnapKV(budget=48, window=8)(model) as report:
        prefill(model, ids, mask)
        prefill(model, ids[:, :30], mask[:, :30])  # below the budget: kept whole
    first, second = report.prefills
    width = ids.shape[1]
    # keys + values, every layer: 2 x layers x kv heads x positions x head_dim x 4 bytes (float32)
    head_dim = config.hidden_size // config.num_attention_heads
    per_position = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4
    assert (first.batch, first.prompt_tokens, first.kept_tokens) == (1, width, 48)
    assert (first.full_bytes, first.kept_bytes) == (per_position * width, per_position * 48)
    assert first.ratio == pytest.approx(width / 48) and first.prefill_ms > first.compress_ms > 0
    assert (second.prompt_tokens, second.kept_tokens, second.ratio) == (30, 30, 1.0)
    assert report.last is second


def test_generate_keeps_the_report_of_its_last_call(tiny_model):
    policy = StreamingLLM(sinks=4, recent=36)
    tiny_model.generate(PROMPTS, max_new_tokens=4, kv_compression=policy)
    (record,) = policy.last_report.prefills  # one batch of three prompts, one prefill
    assert (record.batch, record.prompt_tokens, record.kept_tokens) == (3, 249, 40)


def test_an_empty_report_says_so():
    with pytest.raises(SelfEvolveError, match="no prefill yet"):
        assert KVReport().last


@contextlib.contextmanager
def cache_renamed(model, name: str = "kv_store"):
    """Decoder layers hand attention its cache as ``name``, as a future transformers might rename it again.

    A pre-hook renames the argument before any other hook sees it and the attention's forward maps it back,
    so the model still works (the cache fills up) but the KV hooks never see the cache.
    """

    def rename(module, args, kwargs):
        for old in CACHE_NAMES:
            if old in kwargs:
                kwargs[name] = kwargs.pop(old)
        return args, kwargs

    handles, layers = [], attention_layers(model)
    for module in layers:
        inner = module.forward

        def forward(*args, _inner=inner, _module=module, **kwargs):
            return _inner(*args, **cache_kwarg(_module, kwargs.pop(name, None)), **kwargs)

        module.forward = forward
        handles.append(module.register_forward_pre_hook(rename, with_kwargs=True, prepend=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module in layers:
            del module.forward


@pytest.mark.parametrize("policy", [SnapKV(budget=40, window=8), StreamingLLM(4, 36), RandomKV(budget=40)])
def test_a_compression_the_hooks_never_saw_is_a_loud_error(tiny_model, policy):
    ids, mask = batch(tiny_model, [TEXT * 2])
    with cache_renamed(tiny_model.model):
        full = prefill(tiny_model.model, ids, mask)  # the renamed model still works with no policy
        assert full.cache.get_seq_length() == ids.shape[1]
        with pytest.raises(SelfEvolveError, match=r"did not compress.*expected 40 .*transformers 5\."):
            tiny_model.generate([TEXT * 2], max_new_tokens=4, kv_compression=policy)
        with pytest.raises(SelfEvolveError, match="did not compress"):
            prefill(tiny_model.model, ids, mask, policy)
    assert prefill(tiny_model.model, ids, mask, policy).cache.get_seq_length() == 40  # hooks restored


def test_a_budget_covering_the_prompt_is_no_error_when_the_hooks_are_blind(tiny_model):
    ids, mask = batch(tiny_model, [TEXT])  # 83 tokens, budget 100: nothing to evict, nothing to check
    with cache_renamed(tiny_model.model):
        assert prefill(tiny_model.model, ids, mask, SnapKV(budget=100)).cache.get_seq_length() == 83


def test_the_cache_argument_goes_by_the_name_the_forward_takes():
    class Before:  # transformers < 5.24
        def forward(self, input_ids=None, past_key_values=None): ...

    class After:  # transformers >= 5.24
        def forward(self, input_ids=None, cache=None, **kwargs): ...

    assert cache_kwarg(Before(), "C") == {"past_key_values": "C"}
    assert cache_kwarg(After(), "C") == {"cache": "C"}
    assert cache_in({"past_key_values": "old"}) == "old" and cache_in({"cache": "new"}) == "new"
    assert cache_in({"cache": None, "past_key_values": "old"}) == "old" and cache_in({}) is None


@pytest.mark.parametrize("gqa", ["kv_head", "query_head"])
def test_cache_shrinks_to_the_budget_per_head(tiny_model, gqa):
    config = tiny_model.model.config
    ids, mask = batch(tiny_model, [TEXT * 2])
    full = prefill(tiny_model.model, ids, mask)
    small = prefill(tiny_model.model, ids, mask, SnapKV(budget=48, window=8, gqa=gqa))
    heads = config.num_key_value_heads if gqa == "kv_head" else config.num_attention_heads
    for layer in small.cache.layers:
        assert layer.keys.shape[:3] == layer.values.shape[:3] == (1, heads, 48)
    ratio = full.nbytes / small.nbytes
    groups = config.num_attention_heads // config.num_key_value_heads
    assert ratio == pytest.approx(ids.shape[1] / 48 / (1 if gqa == "kv_head" else groups))
    assert small.mask.shape == (1, 48) and small.positions.tolist() == [ids.shape[1]]


def test_window_is_always_kept_and_order_preserved(tiny_model):
    ids, mask = batch(tiny_model, [TEXT * 2])
    full = prefill(tiny_model.model, ids, mask)
    small = prefill(tiny_model.model, ids, mask, SnapKV(budget=40, window=16))
    for full_layer, layer in zip(full.cache.layers, small.cache.layers, strict=True):
        assert torch.equal(layer.keys[:, :, -16:], full_layer.keys[:, :, -16:])
        assert torch.equal(layer.values[:, :, -16:], full_layer.values[:, :, -16:])
        index = matched_positions(full_layer.keys, layer.keys)
        assert (index.diff(dim=-1) > 0).all()


def matched_positions(full_keys: torch.Tensor, kept_keys: torch.Tensor) -> torch.Tensor:
    """(B, H, C) position in ``full_keys`` (B, H, T, D) of every kept key; asserts each is an exact copy."""
    same = (kept_keys[:, :, :, None] == full_keys[:, :, None]).all(dim=-1)  # (B, H, C, T)
    assert (same.sum(dim=-1) == 1).all()
    return same.long().argmax(dim=-1)


def test_padding_is_never_selected(tiny_model):
    prompts = [TEXT * 2, TEXT[:70], TEXT[:50]]  # every row longer than the budget
    ids, mask = batch(tiny_model, prompts)
    pads = (mask == 0).sum(dim=-1)  # (B,)
    full = prefill(tiny_model.model, ids, mask)
    for policy in (
        SnapKV(budget=40, window=8),
        RandomKV(budget=40),
        SnapKV(budget=40, window=8, pooling="avg"),
    ):
        small = prefill(tiny_model.model, ids, mask, policy)
        assert small.mask.bool().all()
        for full_layer, layer in zip(full.cache.layers, small.cache.layers, strict=True):
            index = matched_positions(full_layer.keys, layer.keys)
            assert (index >= pads[:, None, None]).all()


def test_short_rows_keep_every_token_after_padding_slots(tiny_model):
    ids, mask = batch(tiny_model, PROMPTS)
    small = prefill(tiny_model.model, ids, mask, SnapKV(budget=100, window=8))
    lengths = mask.sum(dim=-1)
    assert small.mask.tolist() == [
        [int(j >= 100 - min(n, 100)) for j in range(100)] for n in lengths.tolist()
    ]


@pytest.mark.parametrize(
    "policy", [StreamingLLM(sinks=0, recent=1), RandomKV(budget=1), SnapKV(budget=0.01, window=1)]
)
@pytest.mark.parametrize("prompt", ["a", "abc", TEXT])
def test_tiny_budgets_and_prompts_never_leave_an_empty_cache(tiny_model, policy, prompt):
    ids, mask = batch(tiny_model, [prompt])
    small = prefill(tiny_model.model, ids, mask, policy)
    assert small.cache.get_seq_length() >= 1
    assert len(tiny_model.generate([prompt], max_new_tokens=3, kv_compression=policy)[0].token_ids) >= 1


def masked_full(lm, ids, mask, keep):
    """The full-cache prefill with the positions outside ``keep`` (B, T) masked out: eviction by masking."""
    full = prefill(lm.model, ids, mask)
    full.mask = full.mask * keep.long()
    return full


def test_positions_after_compression_match_masking_the_evicted_tokens(tiny_model):
    # StreamingLLM keeps the same positions in every head, so evicting them must equal masking them in
    # attention: same logits for a continuation, same greedy tokens, in a left-padded batch.
    prompts = [TEXT * 2, TEXT[:90]]
    ids, mask = batch(tiny_model, prompts)
    rank = mask.cumsum(dim=-1) - 1
    keep = (mask == 1) & ((rank < 4) | (rank >= mask.sum(dim=-1, keepdim=True) - 40))
    small = prefill(tiny_model.model, ids, mask, StreamingLLM(sinks=4, recent=40))
    reference = masked_full(tiny_model, ids, mask, keep)
    torch.testing.assert_close(small.logits, reference.logits)
    question = torch.tensor([tiny_model.encode(" and then?")] * 2)
    asked, asked_reference = (
        extend(tiny_model.model, small, question),
        extend(tiny_model.model, reference, question),
    )
    torch.testing.assert_close(asked.logits, asked_reference.logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(decode(tiny_model.model, asked, 8), decode(tiny_model.model, asked_reference, 8))


def test_streaming_keeps_exactly_sinks_and_recent(tiny_model):
    ids, mask = batch(tiny_model, [TEXT * 2, TEXT[:90]])
    full = prefill(tiny_model.model, ids, mask)
    small = prefill(tiny_model.model, ids, mask, StreamingLLM(sinks=4, recent=20))
    pads = (mask == 0).sum(dim=-1)
    width = ids.shape[1]
    for full_layer, layer in zip(full.cache.layers, small.cache.layers, strict=True):
        index = matched_positions(full_layer.keys, layer.keys)  # (B, H, 24)
        for row, pad in enumerate(pads.tolist()):
            expected = list(range(pad, pad + 4)) + list(range(width - 20, width))
            assert (index[row] == torch.tensor(expected)).all()


@pytest.mark.parametrize("gqa", ["kv_head", "query_head"])
def test_hooks_are_removed_on_exit_even_after_an_exception(tiny_model, gqa):
    model = tiny_model.model
    modules = attention_layers(model)

    def count():
        hooks = [len(model._forward_pre_hooks)]
        return hooks + [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules]

    before, groups = count(), [m.num_key_value_groups for m in modules]
    with pytest.raises(RuntimeError, match="boom"), SnapKV(budget=40, window=8, gqa=gqa)(model):
        assert count() != before
        ids, mask = batch(tiny_model, [TEXT * 2])
        model(input_ids=ids, attention_mask=mask)
        raise RuntimeError("boom")
    assert count() == before
    assert [m.num_key_value_groups for m in modules] == groups


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("full", FullKV()),
        ("snapkv:1024", SnapKV(budget=1024)),
        ("snapkv:0.25", SnapKV(budget=0.25)),
        (" SnapKV:.5 ", SnapKV(budget=0.5)),
        ("snapkv:1.0", SnapKV(budget=1.0)),
        ("snapkv:512,kernel=15", SnapKV(budget=512, kernel=15)),
        ("snapkv:0.5,window=16,pooling=avg,gqa=query_head", SnapKV(0.5, 16, pooling="avg", gqa="query_head")),
        ("random:512", RandomKV(budget=512)),
        ("streaming:4+1020", StreamingLLM(sinks=4, recent=1020)),
        ("streaming:0+1", StreamingLLM(sinks=0, recent=1)),
    ],
)
def test_parse_kv_spec_accepts_the_documented_forms(spec, expected):
    assert parse_kv_spec(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "snapkv",
        "snapkv:",
        "snapkv:-1",
        "snapkv:0",
        "snapkv:0.0",
        "snapkv:1.5",
        "snapkv:16",
        "snapkv:abc",
        "snapkv:1e3",
        "snapkv:nan",
        "snapkv:inf",
        "snapkv:١٢٣",
        "snapkv:1024;rm -rf /",
        "snapkv:512,kernel=8",
        "snapkv:512,kernel=15,kernel=7",
        "snapkv:512,pooling=min",
        "snapkv:512,budget=7",
        "snapkv:512,",
        "snapkv:512,window=1024",
        "random:0",
        "streaming:4",
        "streaming:+4",
        "streaming:4+0",
        "streaming:a+b",
        "full:1",
        "h2o:512",
        "x" * 10_000,
        None,
        1024,
    ],
)
def test_parse_kv_spec_rejects_anything_else_in_one_line(spec):
    with pytest.raises(SelfEvolveError) as error:
        parse_kv_spec(spec)
    message = str(error.value)
    assert "\n" not in message
    assert "snapkv" in message


@pytest.mark.parametrize(
    "build",
    [
        lambda: SnapKV(budget=0),
        lambda: SnapKV(budget=True),
        lambda: SnapKV(budget=1.5),
        lambda: SnapKV(budget=16),
        lambda: SnapKV(kernel=4),
        lambda: SnapKV(window=0),
        lambda: SnapKV(pooling="min"),
        lambda: SnapKV(gqa="per_layer"),
        lambda: StreamingLLM(sinks=-1),
        lambda: StreamingLLM(recent=0),
        lambda: RandomKV(budget=-3),
        lambda: RandomKV(seed="a"),
    ],
)
def test_invalid_hyperparameters_raise(build):
    with pytest.raises(SelfEvolveError):
        build()


def test_max_and_avg_pooling_both_work_and_differ(tiny_model):
    ids, mask = batch(tiny_model, [TEXT * 2])
    model = tiny_model.model
    module = attention_layers(model)[0]
    records = {}
    hook = module.register_forward_hook(
        lambda m, a, k, o: records.update(k=k), with_kwargs=True
    )  # capture the layer's inputs
    try:
        full = prefill(model, ids, mask)
    finally:
        hook.remove()
    keys, hidden = full.cache.layers[0].keys, records["k"]["hidden_states"]
    padding = mask.bool()
    with torch.inference_mode():
        scores = {
            pooling: SnapKV(budget=40, window=8, pooling=pooling).score(
                module, hidden, keys, padding, records["k"]["position_embeddings"]
            )
            for pooling in ("max", "avg")
        }
    assert scores["max"].shape == (1, model.config.num_key_value_heads, ids.shape[1])
    assert torch.isinf(scores["max"][..., -8:]).all() and torch.isfinite(scores["max"][..., :-8]).all()
    assert (scores["max"] >= scores["avg"]).all() and not torch.equal(scores["max"], scores["avg"])
    for pooling in ("max", "avg"):
        policy = SnapKV(budget=40, window=8, pooling=pooling)
        assert tiny_model.generate([TEXT * 2], max_new_tokens=4, kv_compression=policy)[0].token_ids


def test_query_head_variant_decodes_inside_its_context(tiny_model):
    policy = SnapKV(budget=40, window=8, gqa="query_head")
    exact = SnapKV(budget=10_000, gqa="query_head")
    expected = tokens(tiny_model.generate(PROMPTS, max_new_tokens=8))
    assert tokens(tiny_model.generate(PROMPTS, max_new_tokens=8, kv_compression=exact)) == expected
    got = tokens(tiny_model.generate(PROMPTS, max_new_tokens=8, kv_compression=policy))
    ids, mask = batch(tiny_model, PROMPTS)
    loop = decode(tiny_model.model, prefill(tiny_model.model, ids, mask, policy), 8)
    assert [row[: len(g)] for row, g in zip(loop.tolist(), got, strict=True)] == got


def test_plain_transformers_generate_under_the_context_manager(tiny_model):
    ids, mask = batch(tiny_model, PROMPTS)
    policy = SnapKV(budget=40, window=8)
    with SnapKV(budget=40, window=8)(tiny_model.model) as report, torch.inference_mode():
        out = tiny_model.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0
        )
    assert [(r.prompt_tokens, r.kept_tokens) for r in report.prefills] == [(249, 40)]
    assert policy.last_report is None or policy.last_report.prefills == []  # not used yet
    ours = tokens(tiny_model.generate(PROMPTS, max_new_tokens=6, kv_compression=policy, ignore_eos=True))
    assert policy.last_report.last.kept_tokens == 40  # both paths really compressed
    assert [row[: len(o)] for row, o in zip(out[:, ids.shape[1] :].tolist(), ours, strict=True)] == ours


def test_plain_generate_logits_match_the_full_cache_for_rows_within_the_budget(tiny_model):
    # Llama's tiny random model mostly repeats its last token, so compare logits, not only tokens.
    ids, mask = batch(tiny_model, PROMPTS)

    def step_logits(policy):
        with policy(tiny_model.model) if policy else contextlib.nullcontext(), torch.inference_mode():
            out = tiny_model.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=6,
                do_sample=False,
                pad_token_id=0,
                output_logits=True,
                return_dict_in_generate=True,
            )
        return torch.stack(out.logits, dim=1)  # (B, steps, V)

    full, small = step_logits(None), step_logits(SnapKV(budget=100, window=8))
    torch.testing.assert_close(small[1:], full[1:], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(small[0], full[0], rtol=1e-4, atol=1e-4)


def test_query_agnostic_context_is_reusable_across_questions(tiny_model):
    model = tiny_model.model
    context_ids = torch.tensor([tiny_model.encode(TEXT * 2)])
    questions = [torch.tensor([tiny_model.encode(q)]) for q in (" Who sleeps?", " What jumps?")]
    context = prefill(model, context_ids, policy=SnapKV(budget=48, window=8))
    size, length = context.nbytes, context.cache.get_seq_length()
    first = [decode(model, extend(model, context, q), 6) for q in questions]
    again = [decode(model, extend(model, context, q), 6) for q in questions]
    assert context.nbytes == size and context.cache.get_seq_length() == length == 48
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    uncompressed = extend(model, prefill(model, context_ids), questions[0])
    joined = prefill(model, torch.cat([context_ids, questions[0]], dim=-1))
    torch.testing.assert_close(uncompressed.logits, joined.logits, rtol=1e-4, atol=1e-4)


def test_sampling_with_compression_is_seeded(tiny_model):
    policy = SnapKV(budget=40, window=8)

    def run(seed):
        return tokens(
            tiny_model.generate(
                PROMPTS, max_new_tokens=6, temperature=1.0, n=2, seed=seed, kv_compression=policy
            )
        )

    assert run(1) == run(1)
    ids, mask = batch(tiny_model, PROMPTS)
    draws = [
        decode(
            tiny_model.model,
            prefill(tiny_model.model, ids, mask, policy),
            6,
            temperature=1.0,
            top_p=0.9,
            generator=torch.Generator().manual_seed(5),
        )
        for _ in range(2)
    ]
    assert torch.equal(draws[0], draws[1])


def test_decode_stops_rows_at_end_tokens(tiny_model):
    ids, mask = batch(tiny_model, PROMPTS)
    prompt = prefill(tiny_model.model, ids, mask)
    first = decode(tiny_model.model, prompt.clone(), 6)
    eos = int(first[0, 1])
    stopped = decode(tiny_model.model, prompt, 6, eos_token_ids={eos})
    assert (stopped[0, 1:] == eos).all()


def test_right_padding_is_rejected(tiny_model):
    ids = torch.tensor([tiny_model.encode(TEXT * 2)])
    mask = torch.ones_like(ids)
    mask[:, -5:] = 0
    with pytest.raises(SelfEvolveError, match="left padding"):
        prefill(tiny_model.model, ids, mask, SnapKV(budget=40, window=8))
