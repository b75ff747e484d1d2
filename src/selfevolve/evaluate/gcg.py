"""GCG: find a free prompt of ``n`` tokens after which greedy decoding emits a target exactly.

Greedy Coordinate Gradient (Zou et al., 2023, https://arxiv.org/abs/2307.15043) as MiniPrompt uses it
(Schwarzschild et al., 2024, https://arxiv.org/abs/2404.15146). Each step:

1. one forward + backward pass of the current prompt gives the gradient of the target loss (mean cross-entropy
   over the target tokens) with respect to the one-hot prompt tokens, through the embedding matrix;
2. the ``topk`` tokens with the most negative gradient are the candidates of each position; ``batch`` single-token
   swaps (a uniform position, a uniform one of its top-k) are sampled, and swaps to disallowed tokens, duplicates
   and prompts whose text does not tokenize back to the same ids are dropped;
3. the candidates are scored in batches; sorted by swap position, each chunk of ``eval_batch`` reuses the keys and
   values of the prefix it shares with the current prompt (the chat template, and the prompt tokens before its
   earliest swap), taken from the gradient pass, and only the target positions go through the LM head;
4. the prompt moves to the candidate with the lowest loss. A candidate whose teacher-forced argmax equals the target
   at every position is checked once more with a plain forward pass (and, with ``confirm_greedy``, by real greedy
   generation); the search stops at the first one that passes.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.compat import cache_kwarg, cache_of
from selfevolve.runtime.model import LocalModel

MAX_STEPS = 100_000
_MARK = "\x00selfevolve-free-prompt\x00"


@dataclass
class GCGConfig:
    """GCG settings. Defaults marked *(CPU)* are tuned so that a MiniPrompt search finishes on 2 CPU cores."""

    steps: int = 40  # *(CPU)* most optimisation steps; MiniPrompt uses 100 (GCG paper 500)
    topk: int = 256  # candidate tokens per position (GCG paper; MiniPrompt 250)
    batch: int = 32  # *(CPU)* single-token swaps evaluated per step (GCG paper 512, MiniPrompt 100)
    eval_batch: int = 16  # *(CPU)* candidates per forward pass (memory; larger chunks share a shorter prefix)
    template: Literal["none", "chat"] = (
        "none"  # "none": the prompt is raw text (MiniPrompt); "chat": user turn
    )
    ascii_only: bool = False  # only printable-ASCII prompt tokens (nanoGCG's default; MiniPrompt allows any)
    retokenize: bool = True  # drop candidates whose text does not encode back to the same ids (nanoGCG)
    confirm_greedy: bool = True  # confirm a teacher-forced match with real greedy generation
    seed: int = 0  # initial prompt and candidate sampling

    def __post_init__(self) -> None:
        for name in ("steps", "topk", "batch", "eval_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SelfEvolveError(f"GCG {name} must be a positive integer, got {value!r}")
        if self.steps > MAX_STEPS:
            raise SelfEvolveError(f"GCG steps={self.steps} is absurd; use at most {MAX_STEPS}")
        if self.template not in ("none", "chat"):
            raise SelfEvolveError(f"GCG template must be 'none' or 'chat', got {self.template!r}")


@dataclass
class GCGResult:
    """Outcome of one GCG run: the best prompt found (the free tokens and their text) and what it cost."""

    success: bool
    prompt_ids: list[int]
    prompt: str
    loss: float
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)  # loss of the prompt chosen at each step

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Layout:
    """The token ids around the free prompt: ``before + prompt + after`` is the input, ``target`` the output."""

    before: list[int]
    after: list[int]
    target: list[int]
    head: str  # text before the prompt (chat template only; raw prompts get the tokenizer's own specials)
    tail: str

    def ids(self, prompt: list[int]) -> list[int]:
        return [*self.before, *prompt, *self.after]


def layout(model: LocalModel, target: str | list[int], template: str = "none") -> Layout:
    """Tokenize what surrounds the free prompt under ``template``, and the target (or take its ids)."""
    tokenizer = model.tokenizer
    if isinstance(target, str):
        if not target.strip():
            raise SelfEvolveError("the target is empty; pass the text the model should emit")
        target = tokenizer(target, add_special_tokens=False)["input_ids"]
    if not target:
        raise SelfEvolveError("the target has no tokens; pass the text the model should emit")
    if template == "none":
        plain = tokenizer("x", add_special_tokens=False)["input_ids"]
        full = tokenizer("x")["input_ids"]
        before = full[: len(full) - len(plain)] if full[len(full) - len(plain) :] == plain else []
        return Layout(before, [], list(target), "", "")
    head, _, tail = model.render([{"role": "user", "content": _MARK}]).partition(_MARK)
    encode = functools.partial(tokenizer, add_special_tokens=False)
    return Layout(encode(head)["input_ids"], encode(tail)["input_ids"], list(target), head, tail)


@functools.lru_cache(maxsize=4)
def allowed_tokens(tokenizer, vocab_size: int, ascii_only: bool) -> torch.Tensor:
    """Ids a prompt may use: not special or added, decoding to some text (printable ASCII with ``ascii_only``)."""
    size = min(len(tokenizer), vocab_size)
    banned = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    texts = tokenizer.batch_decode([[i] for i in range(size)])
    keep = [
        i
        for i, text in enumerate(texts)
        if i not in banned and text and (not ascii_only or (text.isascii() and text.isprintable()))
    ]
    return torch.tensor(keep, dtype=torch.long)


def _round_trips(model: LocalModel, lay: Layout, prompts: torch.Tensor) -> torch.Tensor:
    """(B,) True where the prompt's text, typed in, tokenizes to exactly ``before + prompt + after``."""
    texts = model.tokenizer.batch_decode(prompts.tolist())
    if lay.head or lay.tail:
        encoded = model.tokenizer([lay.head + t + lay.tail for t in texts], add_special_tokens=False)
    else:
        encoded = model.tokenizer(texts)
    return torch.tensor([ids == lay.ids(p) for ids, p in zip(encoded["input_ids"], prompts.tolist())])


def _initial_prompt(
    model: LocalModel,
    lay: Layout,
    n: int,
    allowed: torch.Tensor,
    generator: torch.Generator,
    retokenize: bool,
    init: Sequence[int] = (),
) -> torch.Tensor:
    """The last ``n`` tokens of ``init``, left-padded with random allowed tokens (MiniPrompt starts from random
    ones), each added only if the text still round-trips; random alone when ``init`` itself does not."""
    prompt = torch.tensor(list(init)[-n:] if n else [], dtype=torch.long)
    if retokenize and len(prompt) and not _round_trips(model, lay, prompt[None])[0]:
        prompt = prompt[:0]
    while len(prompt) < n:
        for _attempt in range(64):
            token = allowed[torch.randint(len(allowed), (1,), generator=generator)]
            grown = torch.cat([token, prompt])
            if not retokenize or _round_trips(model, lay, grown[None])[0]:
                prompt = grown
                break
        else:
            raise SelfEvolveError(
                f"cannot build a {n}-token prompt whose text tokenizes back to the same ids; "
                "turn the retokenization check off (retokenize=False)"
            )
    return prompt


def teacher_forced_match(model: LocalModel, lay: Layout, prompt: list[int]) -> bool:
    """Whether the argmax after ``prompt`` equals the target at every target position (one forward pass)."""
    ids = torch.tensor([lay.ids(prompt) + lay.target[:-1]], device=model.device)
    with torch.inference_mode():
        logits = model.model(input_ids=ids, logits_to_keep=len(lay.target)).logits[0]  # (T, V)
    return bool((logits.argmax(-1).cpu() == torch.tensor(lay.target)).all())


def greedy_match(model: LocalModel, lay: Layout, prompt: list[int]) -> bool:
    """Whether greedy generation after ``prompt`` emits exactly the target tokens first."""
    ids = torch.tensor([lay.ids(prompt)], device=model.device)
    with torch.inference_mode():
        out = model.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=len(lay.target),
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=model.tokenizer.pad_token_id,
        )
    return out[0, ids.shape[1] :].tolist() == lay.target


class _Pass(NamedTuple):
    """What the gradient pass over the current prompt yields."""

    grad: torch.Tensor  # (n, V) d loss / d one-hot prompt
    loss: float
    exact: bool  # teacher-forced argmax equals the target everywhere
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (1, H, L - 1, D) keys and values, detached


def _gradient(model: LocalModel, lay: Layout, prompt: torch.Tensor) -> _Pass:
    """One forward + backward pass of the current prompt through a one-hot @ embedding-matrix input."""
    embedding = model.model.get_input_embeddings().weight  # (V, D)
    device = embedding.device
    one_hot = F.one_hot(prompt.to(device), embedding.shape[0]).to(embedding.dtype).requires_grad_(True)
    fixed = model.model.get_input_embeddings()
    with torch.no_grad():
        before = fixed(torch.tensor(lay.before, dtype=torch.long, device=device))
        rest = fixed(torch.tensor(lay.after + lay.target[:-1], dtype=torch.long, device=device))
    embeds = torch.cat([before, one_hot @ embedding, rest])[None]  # (1, L - 1, D)
    target = torch.tensor(lay.target, device=device)
    with torch.enable_grad():
        out = model.model(inputs_embeds=embeds, use_cache=True, logits_to_keep=len(lay.target))
        logits = out.logits[0].float()  # (T, V)
        loss = F.cross_entropy(logits, target)
        (grad,) = torch.autograd.grad(loss, one_hot)
    kv = [(layer.keys.detach(), layer.values.detach()) for layer in cache_of(out).layers]
    return _Pass(grad, float(loss.detach()), bool((logits.argmax(-1) == target).all()), kv)


def _sample(
    prompt: torch.Tensor, grad: torch.Tensor, allowed_mask: torch.Tensor, config: GCGConfig, generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to 2 x ``batch`` distinct single-token swaps from the top-k of each position: (positions, tokens)."""
    scores = (-grad.float().cpu()).masked_fill(~allowed_mask, float("-inf"))  # (n, V)
    topk = scores.topk(min(config.topk, int(allowed_mask.sum())), dim=1).indices  # (n, k)
    count = 2 * config.batch
    positions = torch.randint(len(prompt), (count,), generator=generator)
    tokens = topk[positions, torch.randint(topk.shape[1], (count,), generator=generator)]
    keep = tokens != prompt[positions]
    pairs = torch.unique(torch.stack([positions[keep], tokens[keep]], 1), dim=0)
    pairs = pairs[torch.randperm(len(pairs), generator=generator)]
    return pairs[:, 0], pairs[:, 1]


def _score(
    model: LocalModel,
    lay: Layout,
    candidates: torch.Tensor,
    positions: torch.Tensor,
    kv: list[tuple[torch.Tensor, torch.Tensor]],
    eval_batch: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (B,) and exact teacher-forced match (B,) of each candidate prompt (B, n), in chunks that reuse the KV."""
    from transformers import DynamicCache

    device = model.device
    before, after = torch.tensor(lay.before, dtype=torch.long), torch.tensor(lay.after, dtype=torch.long)
    target = torch.tensor(lay.target, dtype=torch.long)
    count = len(candidates)
    inputs = torch.cat(
        [before.expand(count, -1), candidates, after.expand(count, -1), target[:-1].expand(count, -1)], 1
    )  # (B, L - 1)
    losses, exact = torch.empty(count), torch.empty(count, dtype=torch.bool)
    order = positions.argsort(stable=True)
    with torch.inference_mode():
        for start in range(0, count, eval_batch):
            rows = order[start : start + eval_batch]
            shared = len(lay.before) + int(positions[rows].min())  # tokens every row shares with the current
            cache = None
            if shared:
                size = (len(rows), -1, -1, -1)
                cache = DynamicCache(
                    [(k[:, :, :shared].expand(size), v[:, :, :shared].expand(size)) for k, v in kv],
                    config=model.model.config,
                )
            logits = model.model(
                input_ids=inputs[rows, shared:].to(device),
                **cache_kwarg(model.model, cache),
                use_cache=cache is not None,
                logits_to_keep=len(target),
            ).logits.float()  # (b, T, V)
            labels = target.to(device).expand(len(rows), -1)
            losses[rows] = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(1).cpu()
            exact[rows] = (logits.argmax(-1) == labels).all(1).cpu()
    return losses, exact


def _verified(model: LocalModel, lay: Layout, prompt: list[int], confirm_greedy: bool) -> bool:
    return teacher_forced_match(model, lay, prompt) and (
        not confirm_greedy or greedy_match(model, lay, prompt)
    )


def gcg(
    model: LocalModel,
    target: str | list[int],
    n_tokens: int,
    config: GCGConfig | None = None,
    init: Sequence[int] = (),
) -> GCGResult:
    """Optimise an ``n_tokens`` prompt so that greedy decoding emits ``target``; stops at the first exact match.

    ``init`` warm-starts the prompt (its last ``n_tokens`` tokens, left-padded with random ones).
    """
    config = config or GCGConfig()
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise SelfEvolveError(f"the prompt needs at least one token, got n_tokens={n_tokens!r}")
    began = time.perf_counter()
    lay = layout(model, target, config.template)
    vocab = model.model.get_input_embeddings().weight.shape[0]
    allowed = allowed_tokens(model.tokenizer, vocab, config.ascii_only)
    if len(allowed) == 0:
        raise SelfEvolveError("no token may appear in the prompt; allow non-ASCII tokens (ascii_only=False)")
    allowed_mask = torch.zeros(vocab, dtype=torch.bool)
    allowed_mask[allowed] = True
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + n_tokens)
    prompt = _initial_prompt(model, lay, n_tokens, allowed, generator, config.retokenize, init)
    best, best_loss, losses, success, step = prompt, float("inf"), [], False, 0
    while step < config.steps:
        step += 1
        current = _gradient(model, lay, prompt)
        if current.loss < best_loss:
            best, best_loss = prompt, current.loss
        if current.exact and _verified(model, lay, prompt.tolist(), config.confirm_greedy):
            best, best_loss, success = prompt, current.loss, True
            break
        positions, tokens = _sample(prompt, current.grad, allowed_mask, config, generator)
        candidates = prompt.repeat(len(positions), 1)
        candidates[torch.arange(len(positions)), positions] = tokens
        if config.retokenize and len(candidates):
            keep = _round_trips(model, lay, candidates)
            candidates, positions = candidates[keep], positions[keep]
        candidates, positions = candidates[: config.batch], positions[: config.batch]
        if not len(candidates):
            losses.append(current.loss)
            continue
        cand_losses, exact = _score(model, lay, candidates, positions, current.kv, config.eval_batch)
        pick = int((torch.where(exact, cand_losses, torch.inf) if exact.any() else cand_losses).argmin())
        prompt = candidates[pick]
        losses.append(float(cand_losses[pick]))
        if exact[pick] and _verified(model, lay, prompt.tolist(), config.confirm_greedy):
            best, best_loss, success = prompt, losses[-1], True
            break
        if losses[-1] < best_loss:
            best, best_loss = prompt, losses[-1]
    ids = best.tolist()
    return GCGResult(
        success=success,
        prompt_ids=ids,
        prompt=model.tokenizer.decode(ids),
        loss=best_loss,
        steps=step,
        seconds=time.perf_counter() - began,
        losses=losses,
    )
