"""Legacy ``logprobs`` for ``/v1/completions``: log-probabilities of given tokens, computed with the model directly.

The prompt's tokens and offsets come from one tokenizer call (``offset_mapping``), the way
:meth:`LocalModel.score <selfevolve.runtime.model.LocalModel.score>` tokenizes, so a client applying the same
offset rule gets the same tokens and scores over HTTP as locally.
"""

from __future__ import annotations

import torch

from selfevolve.runtime.compat import cache_kwarg, cache_of
from selfevolve.runtime.model import LocalModel

CHUNK = 1024
"""Tokens per forward pass: long texts go through in chunks with a KV cache, so logits stay ~CHUNK x vocab."""


def encode_with_offsets(backend: LocalModel, text: str) -> tuple[list[int], list[int]]:
    """Token ids of raw ``text`` (with the tokenizer's usual special tokens, like ``LocalModel.encode``) and offsets.

    A token's offset is where the previous one ended, so a client that takes the next token's offset as this
    token's end sees exactly the ``offset_mapping`` ends that LocalModel uses (special tokens end at 0).
    """
    encoding = backend.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    offsets, reach = [], 0
    for _, end in encoding["offset_mapping"]:
        offsets.append(reach)
        reach = max(reach, end)
    return encoding["input_ids"], offsets


def token_logprobs(
    backend: LocalModel, ids: list[int], start: int, top: int
) -> tuple[list[float | None], list[dict[str, float] | None]]:
    """Log-probability of each of ``ids[start:]`` given the tokens before it, and the ``top`` likeliest there.

    The very first token of ``ids`` has no context: its entries are None, as in OpenAI's legacy format.
    """
    if start >= len(ids):
        return [], []
    chosen: list[float | None] = [None] if start == 0 else []
    tops: list[dict[str, float] | None] = [None] if start == 0 else []
    cache = None
    with backend.lock, torch.inference_mode():
        for begin in range(0, len(ids) - 1, CHUNK):
            piece = torch.tensor([ids[begin : begin + CHUNK]], device=backend.device)
            out = backend.model(input_ids=piece, **cache_kwarg(backend.model, cache), use_cache=True)
            cache = cache_of(out)
            logprobs = torch.log_softmax(
                out.logits[0].float(), dim=-1
            )  # (chunk, V): row k predicts begin + k + 1
            for k in range(max(start - 1 - begin, 0), min(logprobs.shape[0], len(ids) - 1 - begin)):
                row = logprobs[k]
                chosen.append(float(row[ids[begin + k + 1]]))
                values, indices = row.topk(top)
                tops.append({backend.tokenizer.decode([int(i)]): float(v) for v, i in zip(values, indices)})
    return chosen, tops


def legacy_logprobs(backend: LocalModel, ids: list[int], offsets: list[int], start: int, top: int) -> dict:
    """``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`` for ``ids[start:]`` (offsets given for those)."""
    chosen, tops = token_logprobs(backend, ids, start, top)
    return {
        "tokens": [backend.tokenizer.decode([token]) for token in ids[start:]],
        "token_logprobs": chosen,
        "top_logprobs": tops,
        "text_offset": offsets,
    }
