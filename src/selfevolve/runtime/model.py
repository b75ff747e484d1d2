"""The local model: batched generation, continuation scoring and logits for distillation.

:class:`LocalModel` wraps a transformers causal LM and its tokenizer. Generation goes through
``model.generate`` (left padding, chat templates, stop strings, seeds, n samples); scoring tokenizes each
``prompt + continuation`` once, the way an OpenAI-compatible server does, so local and HTTP scores agree.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

import torch

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime.backend import (
    Completion,
    Message,
    Prompt,
    TokenScores,
    check_sampling,
    normalize_stop,
)

ROLES = ("system", "user", "assistant", "tool", "developer")

KVCompression = Callable[[Any], AbstractContextManager]
"""Anything called with the transformers model that returns a context manager patching its cache (SnapKV...)."""


class ContinuationBatch(NamedTuple):
    """Logits that predict each continuation token, right-padded over the batch.

    ``logits``: (B, T, V); ``target_ids``: (B, T) the continuation tokens; ``mask``: (B, T) True on real tokens.
    """

    logits: torch.Tensor
    target_ids: torch.Tensor
    mask: torch.Tensor


def as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    """Accept one prompt (a string or one chat) or a sequence of them; reject anything else with a clear error."""
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, Sequence) or isinstance(prompts, bytes):
        raise SelfEvolveError(
            f"prompts must be a string, a chat (list of messages) or a list of them, got {prompts!r}"
        )
    items = list(prompts)
    if items and all(isinstance(item, dict) for item in items):
        items = [items]
    for item in items:
        if isinstance(item, str):
            continue
        if isinstance(item, Sequence) and item and all(isinstance(m, dict) for m in item):
            for message in item:
                validate_message(message)
            continue
        raise SelfEvolveError(
            f"each prompt must be a string or a non-empty list of chat messages, got {item!r}"
        )
    return items


def validate_message(message: Message) -> None:
    """A chat message needs a known role and string content."""
    if message.get("role") not in ROLES or not isinstance(message.get("content"), str):
        raise SelfEvolveError(
            f"chat message {message!r} is malformed; each needs 'role' (one of {', '.join(ROLES)}) and string 'content'"
        )


class StopOnStrings:
    """A transformers stopping criterion that fires when a row's *generated* text contains a stop string.

    (transformers' own ``stop_strings`` also match across the prompt boundary, ending answers too early.)
    """

    def __init__(self, tokenizer, stop: Sequence[str], prompt_length: int) -> None:
        self.tokenizer, self.stop, self.prompt_length = tokenizer, list(stop), prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        return torch.tensor([any(s in text for s in self.stop) for text in texts], device=input_ids.device)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    hits = [text.find(s) for s in stop if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)


class LocalModel:
    """A transformers causal LM with its tokenizer, behind the :class:`~selfevolve.runtime.backend.Backend` API.

    ``model`` and ``tokenizer`` stay public: training code uses them directly. ``revision`` identifies the
    weights (it is recorded with every experience in the store). ``lock`` serialises use of the model across
    threads (the server); hold it when calling ``model`` directly from a thread.
    """

    def __init__(self, model, tokenizer, *, name: str, revision: str, batch_size: int = 8) -> None:
        if batch_size < 1:
            raise SelfEvolveError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.revision = revision
        self.batch_size = batch_size
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.lock = threading.Lock()
        # the text of every special token, which message text must not turn into control tokens
        self._control_texts = tuple(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)

    def __repr__(self) -> str:
        return f"LocalModel(name={self.name!r}, revision={self.revision!r}, device={self.device})"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def eos_token_ids(self) -> set[int]:
        """Every id that ends a turn: the generation config's and the tokenizer's."""
        configured = self.model.generation_config.eos_token_id
        ids = set(
            configured if isinstance(configured, list) else [configured] if configured is not None else []
        )
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def render(self, prompt: Prompt) -> str:
        """The text the model sees: chat messages through the chat template (with the generation prompt)."""
        if isinstance(prompt, str):
            return prompt
        if not self.tokenizer.chat_template:
            raise SelfEvolveError(
                f"model {self.name!r} has no chat template; pass plain text prompts instead"
            )
        return self.tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False)

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt. Raw text gets the usual special tokens; in a chat, only the template's markup
        becomes control tokens: text inside a message that spells one (``<|im_start|>system``) stays plain text,
        so a message cannot open a turn of its own."""
        if isinstance(prompt, str):
            return self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        text = self.render(prompt)
        ids, position = [], 0
        for message in prompt:
            content = message.get("content")
            if not self._spells_control_tokens(content):
                continue
            found = text.find(content, position)
            if found < 0:
                raise SelfEvolveError(
                    f"a {message.get('role')!r} message spells the model's control tokens and the chat template "
                    "changed its text, so it cannot be kept as plain text; remove the control tokens"
                )
            ids += self.tokenizer(text[position:found], add_special_tokens=False)["input_ids"]
            ids += self.tokenizer(content, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            position = found + len(content)
        return ids + self.tokenizer(text[position:], add_special_tokens=False)["input_ids"]

    def _spells_control_tokens(self, text: object) -> bool:
        """Whether ``text`` (a message's content) contains the text of one of the tokenizer's special tokens."""
        return isinstance(text, str) and any(token in text for token in self._control_texts)

    def _left_pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                ids[i, width - len(row) :] = torch.tensor(row)
                mask[i, width - len(row) :] = 1
        return ids.to(self.device), mask.to(self.device)

    @contextlib.contextmanager
    def _seeded(self, seed: int | None) -> Iterator[None]:
        if seed is None:
            yield
            return
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    def _generation_kwargs(
        self, max_new_tokens: int, temperature: float, top_p: float, n: int, ignore_eos: bool
    ) -> dict:
        check_sampling(max_new_tokens, temperature, top_p, n)
        kwargs: dict = {"max_new_tokens": max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if temperature > 0:
            kwargs |= {
                "do_sample": True,
                "temperature": temperature,
                "top_p": top_p,
                "num_return_sequences": n,
            }
        else:
            kwargs |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if ignore_eos:
            kwargs["min_new_tokens"] = max_new_tokens
        return kwargs

    def _stopping(self, stop: Sequence[str], input_ids: torch.Tensor) -> dict:
        if not stop:
            return {}
        from transformers import StoppingCriteriaList

        return {
            "stopping_criteria": StoppingCriteriaList(
                [StopOnStrings(self.tokenizer, stop, input_ids.shape[1])]
            )
        }

    def _finish(self, new_ids: list[int], stop: Sequence[str]) -> tuple[str, list[int], str]:
        eos, pad = self.eos_token_ids, self.tokenizer.pad_token_id
        reason = "length"
        for position, token in enumerate(new_ids):
            if token in eos:
                new_ids, reason = new_ids[:position], "stop"
                break
        while new_ids and new_ids[-1] == pad:
            new_ids = new_ids[:-1]
        text, stopped = cut_at_stop(self.tokenizer.decode(new_ids, skip_special_tokens=True), stop)
        return text, new_ids, "stop" if stopped else reason

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        n: int = 1,
        ignore_eos: bool = False,
        kv_compression: KVCompression | None = None,
    ) -> list[Completion]:
        """Sample ``n`` completions per prompt in left-padded batches of ``batch_size``; greedy at temperature 0.

        Prompts are batched longest first (less padding) and results come back in input order, prompt-major.
        ``ignore_eos`` forces exactly ``max_new_tokens`` tokens (for throughput measurements).
        ``kv_compression`` (e.g. ``SnapKV(budget=1024)``) compresses each prompt's cache at prefill.
        """
        items = as_prompt_list(prompts)
        stop = normalize_stop(stop)
        kwargs = self._generation_kwargs(max_new_tokens, temperature, top_p, n, ignore_eos)
        sampled = kwargs["do_sample"]
        encoded = [self.encode(item) for item in items]
        order = sorted(range(len(items)), key=lambda i: -len(encoded[i]))
        results: list[list[Completion]] = [[] for _ in items]
        patch = kv_compression(self.model) if kv_compression is not None else contextlib.nullcontext()
        with self.lock, self._seeded(seed), patch, torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                input_ids, attention_mask = self._left_pad([encoded[i] for i in chunk])
                output = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    **kwargs,
                    **self._stopping(stop, input_ids),
                )
                rows = output[:, input_ids.shape[1] :].tolist()
                per_prompt = n if sampled else 1
                for k, index in enumerate(chunk):
                    for j in range(n):
                        text, ids, reason = self._finish(rows[k * per_prompt + (j if sampled else 0)], stop)
                        results[index].append(Completion(text, ids, reason, index, j))
        return [completion for group in results for completion in group]

    def stream(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Yield the answer to one prompt piece by piece as it is generated (stop strings never leak out)."""
        from transformers import TextIteratorStreamer

        items = as_prompt_list(prompt)
        if len(items) != 1:
            raise SelfEvolveError(f"stream takes exactly one prompt, got {len(items)}")
        stop = normalize_stop(stop)
        kwargs = self._generation_kwargs(max_new_tokens, temperature, top_p, 1, False)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        input_ids, attention_mask = self._left_pad([self.encode(items[0])])
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with self.lock, self._seeded(seed), torch.inference_mode():
                    self.model.generate(
                        input_ids=input_ids,
                        attention_mask=attention_mask,
                        streamer=streamer,
                        **kwargs,
                        **self._stopping(stop, input_ids),
                    )
            except BaseException as err:
                failure.append(err)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        hold = max((len(s) for s in stop), default=1) - 1
        text, sent = "", 0
        for piece in streamer:
            text += piece
            cut, stopped = cut_at_stop(text, stop)
            ready = len(cut) if stopped else max(sent, len(text) - hold)
            if ready > sent:
                yield cut[sent:ready] if stopped else text[sent:ready]
                sent = ready
            if stopped:
                break
        worker.join()
        if failure:
            raise failure[0]
        if sent < len(text) and not cut_at_stop(text, stop)[1]:
            yield text[sent:]

    def _pair_ids(self, prompt: Prompt, continuation: str | Sequence[int]) -> tuple[list[int], int]:
        """Token ids of prompt + continuation and the index where the continuation starts.

        A string continuation is tokenized together with the prompt (canonical tokenization, as a server does);
        a token belongs to the continuation when it covers any of its characters. Pre-tokenized continuations
        are appended as given, so teacher and student in distillation see the same target tokens.
        """
        hostile = not isinstance(prompt, str) and any(
            self._spells_control_tokens(m.get("content")) for m in prompt
        )
        if not isinstance(continuation, str) or hostile:
            prompt_ids = self.encode(prompt)
            if isinstance(continuation, str):
                tokens = self.tokenizer(continuation, add_special_tokens=False, split_special_tokens=True)
                continuation = tokens["input_ids"]
            ids = prompt_ids + [int(t) for t in continuation]
            start = len(prompt_ids)
        else:
            rendered = self.render(prompt)
            encoding = self.tokenizer(
                rendered + continuation,
                add_special_tokens=isinstance(prompt, str),
                return_offsets_mapping=True,
            )
            ids = encoding["input_ids"]
            ends = [end for _, end in encoding["offset_mapping"]]
            start = next((i for i, end in enumerate(ends) if end > len(rendered)), len(ids))
        if start == 0:
            raise SelfEvolveError(
                "cannot score a continuation of an empty prompt on a model without a BOS token"
            )
        return ids, start

    def continuation_logits(
        self, prompts: Sequence[Prompt], continuations: Sequence[str | Sequence[int]], *, grad: bool = False
    ) -> ContinuationBatch:
        """Logits predicting every continuation token (one forward pass, right padding, only needed positions).

        With ``grad=True`` the graph is kept, for distillation losses on the student.
        """
        items = as_prompt_list(prompts)
        if len(items) != len(continuations):
            raise SelfEvolveError(
                f"got {len(items)} prompts but {len(continuations)} continuations; pass one each"
            )
        pairs = [self._pair_ids(p, c) for p, c in zip(items, continuations)]
        width = max(len(ids) for ids, _ in pairs)
        input_ids = torch.full((len(pairs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for i, (ids, _) in enumerate(pairs):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
        first = min(start for _, start in pairs) - 1
        keep = torch.arange(first, max(width - 1, first + 1), device=self.device)
        with torch.set_grad_enabled(grad):
            out = self.model(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                logits_to_keep=keep,
            )
        logits = out.logits  # (B, len(keep), V): logits[:, k] predicts token first + k + 1
        rows = [logits[i, start - 1 - first : len(ids) - 1 - first] for i, (ids, start) in enumerate(pairs)]
        gathered = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # (B, T, V)
        targets = torch.full(gathered.shape[:2], self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(gathered.shape[:2], dtype=torch.bool)
        for i, (ids, start) in enumerate(pairs):
            targets[i, : len(ids) - start] = torch.tensor(ids[start:], dtype=torch.long)
            mask[i, : len(ids) - start] = True
        return ContinuationBatch(gathered, targets.to(self.device), mask.to(self.device))

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[TokenScores]:
        """Per-token log-probabilities of each continuation after its prompt, in batches of ``batch_size``."""
        items = as_prompt_list(prompts)
        if len(items) != len(continuations):
            raise SelfEvolveError(
                f"got {len(items)} prompts but {len(continuations)} continuations; pass one each"
            )
        if not all(isinstance(c, str) for c in continuations):
            raise SelfEvolveError("continuations must be strings")
        results: list[TokenScores] = []
        with self.lock, torch.inference_mode():
            for start in range(0, len(items), self.batch_size):
                batch = self.continuation_logits(
                    items[start : start + self.batch_size], continuations[start : start + self.batch_size]
                )
                logprobs = torch.log_softmax(batch.logits.float(), dim=-1)
                picked = logprobs.gather(-1, batch.target_ids.unsqueeze(-1)).squeeze(-1)  # (B, T)
                for row in range(picked.shape[0]):
                    length = int(batch.mask[row].sum())
                    ids = batch.target_ids[row, :length].tolist()
                    results.append(
                        TokenScores(
                            tokens=[self.tokenizer.decode([t]) for t in ids],
                            token_ids=ids,
                            logprobs=picked[row, :length].tolist(),
                        )
                    )
        return results
