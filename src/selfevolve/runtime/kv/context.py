"""Prefill once, continue many times: the cache of a (compressed) prompt as a value, for query-agnostic use.

Query-aware compression (the paper's setting) needs nothing from here: end the prompt with the question and
generate under a policy (``LocalModel.generate(..., kv_compression=SnapKV(...))`` or ``with policy(model)``).
Query-agnostic compression compresses a context before any question is known and reuses it::

    context = prefill(model, context_ids, policy=SnapKV(budget=512))   # compressed once
    for question_ids in questions:
        answer = decode(model, extend(model, context, question_ids), max_new_tokens=32)

:func:`prefill` and :func:`extend` return a new :class:`PromptCache` (``extend`` copies the cache, so the
context stays reusable); :func:`decode` appends to the cache it is given.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Collection
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from selfevolve.runtime.compat import cache_kwarg
from selfevolve.runtime.kv.base import KVPolicy, kept_mask


@dataclass
class PromptCache:
    """A prefilled cache and what is needed to continue from it.

    ``cache`` holds (B, H, C, D) keys and values per layer; ``mask`` (B, C) is 1 on real tokens (0 on the
    padding slots of left-padded rows); ``positions`` (B,) is the position of each row's next token (its count
    of real tokens so far, whatever was evicted); ``logits`` (B, V) predicts that token; ``policy`` compressed
    it.
    """

    cache: DynamicCache
    mask: torch.Tensor
    positions: torch.Tensor
    logits: torch.Tensor
    policy: KVPolicy | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached keys and values, all layers."""
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.cache.layers)

    def clone(self) -> PromptCache:
        """An independent copy (continuing it leaves this one untouched)."""
        return copy.deepcopy(self)


def _forward(model, prompt: PromptCache, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions):
    """Run ``input_ids`` (B, Q) on the cache of ``prompt``; return the next-token logits (B, V).

    The policy's hooks are needed to compress a prefill and to attend over a per-query-head cache; otherwise
    the forward runs bare, so decoding costs the same whatever compressed the cache.
    """
    policy = prompt.policy
    hooked = policy is not None and (prompt.cache.get_seq_length() == 0 or policy.per_query_head)
    with policy(model) if hooked else contextlib.nullcontext(), torch.inference_mode():
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            **cache_kwarg(model, prompt.cache),
            use_cache=True,
            logits_to_keep=1,
        )
    return out.logits[:, -1]  # (B, V)


def prefill(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, policy: KVPolicy | None = None
) -> PromptCache:
    """Run a (left-padded) prompt batch (B, T) and keep its cache, compressed by ``policy`` if given.

    Positions count real tokens only, as ``generate`` does, so the result matches ``generate``'s prefill.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    positions = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)  # (B, T)
    lengths = attention_mask.sum(dim=-1)  # (B,)
    prompt = PromptCache(DynamicCache(config=model.config), attention_mask, lengths, None, policy)
    prompt.logits = _forward(model, prompt, input_ids, attention_mask, positions)
    prompt.mask = kept_mask(lengths, prompt.cache.get_seq_length()).to(attention_mask.dtype)  # (B, C)
    return prompt


def extend(
    model, prompt: PromptCache, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> PromptCache:
    """Append tokens (B, Q) to a copy of ``prompt`` without compressing them, e.g. a question after a context.

    ``attention_mask`` (B, Q) marks left padding when the rows' continuations differ in length.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(prompt.mask.dtype)
    positions = prompt.positions[:, None] + (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)  # (B, Q)
    result = prompt.clone()
    result.mask = torch.cat([prompt.mask, attention_mask], dim=-1)  # (B, C + Q)
    result.positions = prompt.positions + attention_mask.sum(dim=-1)
    result.logits = _forward(model, result, input_ids, result.mask, positions)
    return result


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None):
    """Next tokens (B,): greedy at temperature 0, else nucleus sampling."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = (logits.float() / temperature).softmax(dim=-1)  # (B, V)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p  # (B, V) beyond the nucleus
    sorted_probs = sorted_probs.masked_fill(outside, 0)
    choice = torch.multinomial(sorted_probs, 1, generator=generator)  # (B, 1)
    return order.gather(-1, choice)[:, 0]


def decode(
    model,
    prompt: PromptCache,
    max_new_tokens: int,
    *,
    eos_token_ids: Collection[int] = (),
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` tokens (B, N) from ``prompt``, appending to its cache.

    Stops when every row has produced an end token; rows that ended early are filled with that token.
    """
    batch = prompt.logits.shape[0]
    eos = torch.tensor(sorted(eos_token_ids), dtype=torch.long, device=prompt.logits.device)
    done = torch.zeros(batch, dtype=torch.bool, device=prompt.logits.device)
    last = torch.zeros(batch, dtype=torch.long, device=prompt.logits.device)
    tokens = []
    for step in range(max_new_tokens):
        token = torch.where(done, last, _pick(prompt.logits, temperature, top_p, generator))  # (B,)
        tokens.append(token)
        done, last = done | torch.isin(token, eos), token
        if done.all() or step == max_new_tokens - 1:
            break
        prompt.mask = torch.cat([prompt.mask, prompt.mask.new_ones(batch, 1)], dim=-1)  # (B, C + t)
        prompt.logits = _forward(model, prompt, token[:, None], prompt.mask, prompt.positions[:, None])
        prompt.positions = prompt.positions + 1
    return torch.stack(tokens, dim=1)  # (B, N)
