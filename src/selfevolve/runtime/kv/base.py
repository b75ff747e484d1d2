"""The base every KV-cache policy shares: hooks that compress each layer's prompt cache once, at prefill.

A policy is a dataclass whose fields are its hyperparameters. Calling it with a transformers model returns a
context manager that hooks every attention layer and the model itself, and removes the hooks on exit (even on
an exception)::

    with SnapKV(budget=1024)(model):
        model.generate(input_ids, attention_mask=attention_mask)

A variant implements two methods: :meth:`KVPolicy.budget_for` (how many positions to keep) and
:meth:`KVPolicy.score` (which ones). The base does the rest: it keeps the ``budget`` best-scored positions per
head (never a padding position), in their original order, so keys keep the rotary positions they were
computed at and decoding appends at the true next position. With left padding a row shorter than the budget
keeps all its tokens plus padding slots; those slots come first in every head, so one (B, C) mask covers the
whole cache, and the model-level hook rewrites the 2D attention mask ``generate`` passes (prompt width + new
tokens) to match it.

Every ``with`` block yields a :class:`KVReport` (also kept as the policy's ``last_report``) with one
:class:`PrefillRecord` per prefill: prompt width, positions kept, cache bytes before and after, and the time the
compression took. A prefill whose budget is below the prompt width but whose cache did not shrink to the budget
raises :class:`SelfEvolveError` at once: a policy that silently did nothing is an error, not a result.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar

import torch
from transformers.cache_utils import DynamicLayer

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.compat import cache_in, cache_of, transformers_version


def check_budget(budget: int | float) -> None:
    """A budget is tokens per head (an int >= 1) or the share of the prompt to keep (a float in (0, 1])."""
    valid_count = isinstance(budget, int) and not isinstance(budget, bool) and budget >= 1
    valid_ratio = isinstance(budget, float) and 0 < budget <= 1
    if not (valid_count or valid_ratio):
        raise SelfEvolveError(
            f"KV budget {budget!r} is invalid: give tokens kept per head (an int >= 1, e.g. 1024) "
            "or the share of the prompt to keep (a float in (0, 1], e.g. 0.25)"
        )


def resolve_budget(budget: int | float, length: int) -> int:
    """Tokens kept of a prompt of ``length`` tokens: the count, or ``ceil(ratio * length)`` (at least 1)."""
    return max(1, math.ceil(budget * length)) if isinstance(budget, float) else budget


def kept_mask(lengths: torch.Tensor, budget: int) -> torch.Tensor:
    """(B, C) 1 on real tokens of a compressed cache; a row of L < C tokens has C - L padding slots first."""
    slots = torch.arange(budget, device=lengths.device)
    return (slots[None, :] >= (budget - lengths)[:, None]).long()  # (B, C)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The rotary-embedding helper of Llama and Qwen2: (-x2, x1) on the two halves of the last dim."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def attention_layers(model) -> list[torch.nn.Module]:
    """The ``self_attn`` module of every decoder layer (Llama, Qwen2, Mistral-like causal LMs)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None or not all(hasattr(layer, "self_attn") for layer in layers):
        raise SelfEvolveError(
            f"KV compression supports decoder-only models with `model.layers[i].self_attn` (Llama, Qwen2); "
            f"{type(model).__name__} has another layout"
        )
    return [layer.self_attn for layer in layers]


class ExpandedLayer(DynamicLayer):
    """A cache layer stored per query head (SnapKV's per-query-head variant); new KV heads are repeated in.

    Only valid inside its policy's context, which runs attention with one KV head per query head.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, groups: int) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values  # (B, Hq, C, D)
        self.groups = groups

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        keys = key_states.repeat_interleave(self.groups, dim=1)  # (B, Hkv, t, D) -> (B, Hq, t, D)
        values = value_states.repeat_interleave(self.groups, dim=1)
        return super().update(keys, values)


@dataclass(frozen=True)
class PrefillRecord:
    """What a policy did to one prefill's cache (all layers together)."""

    batch: int
    prompt_tokens: int  # T, the (padded) prompt width
    kept_tokens: int  # C, positions per head after the prefill (T when nothing was evicted)
    full_bytes: int  # keys and values the prompt would hold uncompressed
    kept_bytes: int  # keys and values held after the prefill
    compress_ms: float  # time spent choosing and gathering the kept positions, all layers
    prefill_ms: float  # the whole prefill forward, compression included

    @property
    def ratio(self) -> float:
        """How many times smaller the cache is than the full one."""
        return self.full_bytes / self.kept_bytes

    def summary(self) -> str:
        """One line for people: positions kept and bytes before and after."""
        mib = 2**20
        return (
            f"KV cache: {self.kept_tokens} of {self.prompt_tokens} prompt positions kept per head, "
            f"{self.full_bytes / mib:.1f} -> {self.kept_bytes / mib:.1f} MiB ({self.ratio:.1f}x smaller)"
        )


@dataclass
class KVReport:
    """The prefills a policy compressed inside one ``with`` block, in order."""

    prefills: list[PrefillRecord] = field(default_factory=list)

    @property
    def last(self) -> PrefillRecord:
        """The most recent prefill (a :class:`SelfEvolveError` when there was none)."""
        if not self.prefills:
            raise SelfEvolveError("the KV policy has seen no prefill yet: run generate or prefill under it")
        return self.prefills[-1]


class _PromptState:
    """What one context entry knows of the current prompt: padding, width, and its mask after compression."""

    def __init__(self) -> None:
        self.padding: torch.Tensor | None = None  # (B, T) True on real tokens, None when nothing is padded
        self.width = 0
        self.kept: torch.Tensor | None = None  # (B, C) after a compression, else None
        self.prefill = False  # the forward under way is a prefill
        self.full_bytes = 0
        self.compress_seconds = 0.0
        self.started = 0.0  # perf_counter at the start of the prefill


def _watch_prompt(state: _PromptState, model, args: tuple, kwargs: dict):
    """Model pre-hook: record a prefill's padding, then align ``generate``'s 2D mask with the cache."""
    cache, mask = cache_in(kwargs), kwargs.get("attention_mask")
    tokens = kwargs.get("input_ids", args[0] if args else None)
    width = (tokens if tokens is not None else kwargs["inputs_embeds"]).shape[1]
    if cache is None or cache.get_seq_length() == 0:
        state.padding = mask.bool() if mask is not None and mask.ndim == 2 else None
        state.width, state.kept, state.prefill = width, None, True
        state.full_bytes, state.compress_seconds, state.started = 0, 0.0, time.perf_counter()
        return None
    aligned = mask is None or mask.ndim != 2 or mask.shape[1] == cache.get_seq_length() + width
    if state.kept is None or aligned:
        return None
    new_tokens = mask[:, state.width :]  # (B, t) the tokens after the prompt
    kwargs["attention_mask"] = torch.cat([state.kept.to(mask.dtype), new_tokens], dim=-1)  # (B, C + t)
    return args, kwargs


def _attend_per_query_head(groups: int, module, args: tuple, kwargs: dict) -> None:
    """Attention pre-hook: one KV head per query head on an expanded layer, the model's grouping otherwise."""
    cache = cache_in(kwargs)
    expanded = cache is not None and isinstance(cache.layers[module.layer_idx], ExpandedLayer)
    module.num_key_value_groups = 1 if expanded else groups


@dataclass
class KVPolicy:
    """Base of the KV-cache policies: compress each layer's prompt cache once, at prefill, with forward hooks.

    Subclasses are dataclasses with their hyperparameters as fields, and implement :meth:`budget_for` and
    :meth:`score`. Compression only happens on a prefill (a forward pass on an empty cache), so decoding and
    :func:`~selfevolve.runtime.kv.extend` append to the compressed cache untouched. ``last_report`` is the
    :class:`KVReport` of the most recent ``with`` block.
    """

    last_report: ClassVar[KVReport | None] = None

    @property
    def per_query_head(self) -> bool:
        """Whether :meth:`score` returns one row per query head (the cache is then stored per query head)."""
        return False

    def budget_for(self, length: int) -> int:
        """Positions kept per head of a prompt of ``length`` real tokens (``length`` or more: keep all)."""
        raise NotImplementedError

    def score(
        self,
        module: torch.nn.Module,
        hidden_states: torch.Tensor,
        keys: torch.Tensor,
        padding: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """Importance of each prompt position, (B, H, T); the highest ``budget_for`` are kept.

        ``hidden_states`` (B, T, hidden) is the attention input, ``keys`` (B, Hkv, T, D) the cached keys
        (after RoPE), ``padding`` (B, T) True on real tokens, ``position_embeddings`` the layer's (cos, sin).
        H is the number of KV heads, or of query heads when :attr:`per_query_head`.
        """
        raise NotImplementedError

    def compress(
        self,
        module: torch.nn.Module,
        hidden_states: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        padding: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Kept keys and values (B, H, C, D) and the (B, C) kept mask; None when everything is kept."""
        lengths = padding.sum(dim=-1)  # (B,)
        budget = self.budget_for(int(lengths.max()))
        if budget >= keys.shape[-2]:
            return None
        scores = self.score(module, hidden_states, keys, padding, position_embeddings)  # (B, H, T)
        scores = scores.masked_fill(~padding[:, None, :], float("-inf"))
        keep = scores.topk(budget, dim=-1).indices.sort(dim=-1).values  # (B, H, C), padding slots first
        groups = scores.shape[1] // keys.shape[1]
        if groups > 1:
            keys = keys.repeat_interleave(groups, dim=1)  # (B, Hq, T, D)
            values = values.repeat_interleave(groups, dim=1)
        index = keep[..., None].expand(-1, -1, -1, keys.shape[-1])  # (B, H, C, D)
        return keys.gather(2, index), values.gather(2, index), kept_mask(lengths, budget)

    def _on_attention(self, state: _PromptState, module, args: tuple, kwargs: dict, output) -> None:
        """Attention forward hook: compress this layer's cache in place when the forward was a prefill."""
        cache = cache_in(kwargs)
        hidden_states = kwargs.get("hidden_states", args[0] if args else None)
        if cache is None or not state.prefill:
            return
        layer = cache.layers[module.layer_idx]
        if layer.get_seq_length() != hidden_states.shape[1]:
            return
        if type(layer) is not DynamicLayer:
            raise SelfEvolveError(
                f"KV compression needs a DynamicCache of full-attention layers, got {type(layer).__name__}; "
                "use the default cache and a model without sliding-window layers"
            )
        padding = state.padding
        if padding is None or padding.shape != hidden_states.shape[:2]:
            padding = torch.ones(hidden_states.shape[:2], dtype=torch.bool, device=hidden_states.device)
        elif (padding.long().diff(dim=-1) < 0).any():
            raise SelfEvolveError(
                "KV compression needs left padding (pads before the prompt), got right padding"
            )
        state.full_bytes += layer.keys.nbytes + layer.values.nbytes
        start = time.perf_counter()
        compressed = self.compress(
            module, hidden_states, layer.keys, layer.values, padding, kwargs["position_embeddings"]
        )
        state.compress_seconds += time.perf_counter() - start
        if compressed is None:
            return
        keys, values, state.kept = compressed
        groups = keys.shape[1] // layer.keys.shape[1]
        if groups > 1:
            cache.layers[module.layer_idx] = ExpandedLayer(keys, values, groups)
        else:
            layer.keys, layer.values = keys, values

    def _check_prefill(
        self, state: _PromptState, report: KVReport, model, args: tuple, kwargs: dict, output
    ) -> None:
        """Model forward hook: record a finished prefill, and fail loudly when its cache did not shrink."""
        if not state.prefill:
            return
        prefill_ms = 1000 * (time.perf_counter() - state.started)
        state.prefill = False
        cache = cache_in(kwargs)
        cache = cache_of(output) if cache is None else cache
        width = state.width
        real = int(state.padding.sum(dim=-1).max()) if state.padding is not None else width
        budget = self.budget_for(real)
        kept = sorted({layer.get_seq_length() for layer in cache.layers}) if cache is not None else []
        expected = min(budget, width)
        if kept != [expected]:
            raise SelfEvolveError(
                f"{type(self).__name__} did not compress the prompt cache: expected {expected} positions per "
                f"head after a {width}-token prefill, found {kept or 'no cache'}; the model's attention layers "
                f"did not hand the cache to the KV hooks under transformers {transformers_version()}: "
                "install the tested versions (make install, constraints.txt) or report it"
            )
        kept_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
        record = PrefillRecord(
            batch=cache.layers[0].keys.shape[0],
            prompt_tokens=width,
            kept_tokens=expected,
            full_bytes=state.full_bytes or kept_bytes,
            kept_bytes=kept_bytes,
            compress_ms=1000 * state.compress_seconds,
            prefill_ms=prefill_ms,
        )
        report.prefills.append(record)

    @contextlib.contextmanager
    def __call__(self, model) -> Iterator[KVReport]:
        """Hook ``model`` (a transformers causal LM) for the ``with`` block; yields its :class:`KVReport`."""
        modules = attention_layers(model)
        groups = {module: module.num_key_value_groups for module in modules}
        state = _PromptState()
        report = self.last_report = KVReport()
        handles = []
        try:
            handles.append(model.register_forward_pre_hook(partial(_watch_prompt, state), with_kwargs=True))
            check = partial(self._check_prefill, state, report)
            handles.append(model.register_forward_hook(check, with_kwargs=True))
            for module in modules:
                hook = partial(self._on_attention, state)
                handles.append(module.register_forward_hook(hook, with_kwargs=True))
                if self.per_query_head:
                    hook = partial(_attend_per_query_head, groups[module])
                    handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            yield report
        finally:
            for handle in handles:
                handle.remove()
            for module, count in groups.items():
                module.num_key_value_groups = count
