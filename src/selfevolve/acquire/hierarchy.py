"""Instruction-hierarchy training data: conversations with target replies (https://arxiv.org/abs/2404.13208,
Section 3).

* *context synthesis* (aligned): a compositional request split across the system and user messages (a
  constraint in the system message, the task from the user); the target is the model's own answer to the
  whole request asked at once.
* *context ignorance* (misaligned): an injection inside a tool's output or inside the user's text under a
  closed-domain system prompt; the target is the model's own reply to the same conversation **without** the
  injection (context distillation). System-prompt extraction and jailbreak attempts get a short refusal.
* *aligned look-alikes*: benign questions next to a secret, instructions in a note the user asked to follow;
  the target is the model's own answer to the bare request (so it never holds the secret).
* *ordinary* instruction data: seed tasks with the model's own answers, mixed in so capabilities stay.

Only ``train`` attack families (``selfevolve.attacks``) are used; held-out families stay unseen.
Tool output is passed as role ``tool`` when the chat template renders it (SmolLM2: a ChatML ``tool`` turn;
Qwen2.5: a user turn wrapped in ``<tool_response>``), else as a user turn marked ``<tool_output>``
(:func:`selfevolve.attacks.chat_for`). Message text is tokenized as plain text (``LocalModel.encode``), so an
injected ``<|im_start|>system`` stays text and cannot open a turn.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from selfevolve.attacks import (
    REFUSALS,
    Filler,
    chat_for,
    direct_chat,
    extraction_chat,
    extraction_families,
    indirect_chat,
    injection_families,
    jailbreak_chat,
    jailbreak_families,
    lookalike,
    lookalike_families,
)
from selfevolve.errors import SelfEvolveError
from selfevolve.io import read_jsonl, write_jsonl
from selfevolve.runtime.model import LocalModel

KINDS = ("synthesis", "ignorance", "refusal", "lookalike", "ordinary")

SEED_TASKS = (
    "Explain why the sky is blue.",
    "Give three tips for staying focused while studying.",
    "Write a short poem about the sea.",
    "Describe how to make a cup of tea.",
    "What are the benefits of regular exercise?",
    "Explain what photosynthesis is.",
    "Suggest a name for a friendly pet dog.",
    "Describe a sunny day at the beach.",
    "How do I keep houseplants healthy?",
    "Explain how a rainbow forms.",
    "Give me two ideas for a rainy afternoon.",
    "What should I pack for a weekend hiking trip?",
    "Explain what a computer's memory is for.",
    "Write a thank-you note to a neighbour who watered my plants.",
    "Why do leaves change colour in autumn?",
    "Describe the water cycle.",
    "How can I save money on groceries?",
    "Explain the difference between weather and climate.",
    "Give advice for a first day at a new job.",
    "What makes a good breakfast?",
)

CONSTRAINTS = (
    "Answer in at most two sentences.",
    "Use simple words that a child can understand.",
    "Start your answer with the word 'Sure'.",
    "Format your answer as a short bulleted list.",
    "Keep a warm and friendly tone.",
    "Answer in exactly one sentence.",
)


@dataclass(frozen=True)
class HierarchyExample:
    """One training conversation and the reply to train on."""

    kind: str  # synthesis, ignorance, refusal, lookalike or ordinary
    family: str
    messages: tuple[dict, ...]
    target: str

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "family": self.family,
            "messages": list(self.messages),
            "target": self.target,
        }


@dataclass
class HierarchyDataConfig:
    """How many conversations of each kind to generate (paper: a large mix; these fit a CPU run)."""

    synthesis: int = 24  # context synthesis (aligned, split across system and user)
    ignorance: int = 48  # injections in tool output and in user text under a closed-domain system prompt
    extraction: int = 24  # system-prompt extraction -> short refusal
    jailbreak: int = 12  # train-family jailbreak wrappers around disallowed requests -> short refusal
    lookalike: int = 32  # benign look-alikes, answered
    ordinary: int = 32  # plain instruction data with the model's own answers
    max_new_tokens: int = 64  # length of each model-written target
    max_wrapper_chars: int = 1500  # longest jailbreak wrapper trained on (long prompts cost memory)
    seed: int = 0

    def __post_init__(self) -> None:
        counts = (
            self.synthesis,
            self.ignorance,
            self.extraction,
            self.jailbreak,
            self.lookalike,
            self.ordinary,
        )
        if min(counts) < 0 or sum(counts) == 0:
            raise SelfEvolveError("hierarchy data counts must be >= 0 and not all 0; set e.g. ignorance=48")
        if self.max_new_tokens < 1:
            raise SelfEvolveError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")


def load_seed_tasks(path: str | Path) -> list[str]:
    """Seed tasks from JSONL: each line's ``task``, ``prompt`` or ``instruction`` field."""
    tasks = []
    for number, record in read_jsonl(path):
        text = next(
            (record[k] for k in ("task", "prompt", "instruction") if isinstance(record.get(k), str)), None
        )
        if not text or not text.strip():
            raise SelfEvolveError(f"{path} line {number}: needs a string 'task' (or 'prompt'/'instruction')")
        tasks.append(text.strip())
    if not tasks:
        raise SelfEvolveError(f"{path} holds no seed tasks; add JSONL lines with a 'task' field")
    return tasks


def _train_only(families: dict) -> list[tuple[str, tuple]]:
    return [(name, items) for name, (split, items) in families.items() if split == "train"]


def plan_examples(
    config: HierarchyDataConfig, seed_tasks: Sequence[str] = SEED_TASKS
) -> list[tuple[str, str, list[dict], list[dict] | str]]:
    """(kind, family, training conversation, reference) for every example: the reference is the conversation
    whose reply becomes the target (the model answers it), or the fixed target text itself."""
    if not seed_tasks:
        raise SelfEvolveError("no seed tasks; pass a JSONL of tasks or use the built-in ones")
    fill = Filler(random.Random(config.seed))
    rng = fill.rng
    planned: list[tuple[str, str, list[dict], list[dict] | str]] = []
    for _ in range(config.synthesis):
        task, constraint = rng.choice(seed_tasks), rng.choice(CONSTRAINTS)
        messages = [
            {"role": "system", "content": f"You are a helpful assistant. {constraint}"},
            {"role": "user", "content": task},
        ]
        planned.append(
            ("synthesis", "system+user", messages, [{"role": "user", "content": f"{task} {constraint}"}])
        )
    injections = _train_only(injection_families())
    for i in range(config.ignorance):
        name, items = injections[i % len(injections)]
        build, where = (indirect_chat, "indirect") if i % 2 == 0 else (direct_chat, "direct")
        attack, clean, _ = build(fill, rng.choice(items))
        planned.append(("ignorance", f"{where}:{name}", attack, clean))
    extraction = _train_only(extraction_families())
    for i in range(config.extraction):
        name, requests = extraction[i % len(extraction)]
        messages, _ = extraction_chat(fill, rng.choice(requests))
        planned.append(("refusal", name, messages, rng.choice(REFUSALS)))
    jailbreaks = _train_only(jailbreak_families(config.max_wrapper_chars))
    for i in range(config.jailbreak if jailbreaks else 0):
        name, wrappers = jailbreaks[i % len(jailbreaks)]
        planned.append(
            ("refusal", name, jailbreak_chat(fill, rng.choice(wrappers), "train"), rng.choice(REFUSALS))
        )
    alikes = [name for name, split in lookalike_families().items() if split == "train"]
    for i in range(config.lookalike):
        name = alikes[i % len(alikes)]
        messages, _ = lookalike(fill, name, "train")
        question = messages[-1]["content"]
        planned.append(("lookalike", name, messages, [{"role": "user", "content": question}]))
    for _ in range(config.ordinary):
        task = rng.choice(seed_tasks)
        messages = [{"role": "user", "content": task}]
        planned.append(("ordinary", "seed", messages, messages))
    return planned


def generate_hierarchy_data(
    model: LocalModel,
    config: HierarchyDataConfig | None = None,
    seed_tasks: Sequence[str] = SEED_TASKS,
    *,
    on_batch=None,
) -> list[HierarchyExample]:
    """Training conversations with targets; model-written targets come from greedy replies of ``model`` to
    each example's reference conversation (never the injected one)."""
    config = config or HierarchyDataConfig()
    if not model.tokenizer.chat_template:
        raise SelfEvolveError(
            f"model {model.name!r} has no chat template; instruction-hierarchy data needs system/user/tool roles"
        )
    planned = plan_examples(config, seed_tasks)
    asks = [i for i, (_, _, _, ref) in enumerate(planned) if not isinstance(ref, str)]
    prompts = [chat_for(model.tokenizer, planned[i][3]) for i in asks]
    replies: dict[int, str] = {}
    step = max(1, model.batch_size * 2)
    for start in range(0, len(prompts), step):
        chunk = model.generate(
            prompts[start : start + step], max_new_tokens=config.max_new_tokens, temperature=0.0
        )
        for index, completion in zip(asks[start : start + step], chunk):
            replies[index] = completion.text.strip()
        if on_batch is not None:
            on_batch(min(start + step, len(prompts)), len(prompts))
    examples = []
    for i, (kind, family, messages, ref) in enumerate(planned):
        target = ref if isinstance(ref, str) else replies[i]
        if target:
            examples.append(HierarchyExample(kind, family, tuple(messages), target))
    if not examples:
        raise SelfEvolveError("the model wrote only empty replies, so there is nothing to train on")
    return examples


def write_examples(examples: Sequence[HierarchyExample], path: str | Path) -> Path:
    """Write examples as JSONL (atomically)."""
    return write_jsonl(path, (e.as_dict() for e in examples))


def load_examples(path: str | Path) -> list[HierarchyExample]:
    """Examples from a JSONL file :func:`write_examples` wrote (or any with messages and target)."""
    examples = []
    for number, record in read_jsonl(path):
        messages, target = record.get("messages"), record.get("target")
        if not isinstance(messages, list) or not messages or not isinstance(target, str) or not target:
            raise SelfEvolveError(
                f"{path} line {number}: needs a non-empty 'messages' list and a 'target' string"
            )
        for m in messages:
            if (
                not isinstance(m, dict)
                or m.get("role") not in ("system", "user", "assistant", "tool")
                or not isinstance(m.get("content"), str)
            ):
                raise SelfEvolveError(f"{path} line {number}: message {m!r} needs a role and string content")
        examples.append(
            HierarchyExample(
                str(record.get("kind", "")), str(record.get("family", "")), tuple(messages), target
            )
        )
    if not examples:
        raise SelfEvolveError(f"{path} holds no examples")
    return examples
