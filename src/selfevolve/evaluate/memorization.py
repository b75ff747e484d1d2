"""Memorization audit: MiniPrompt's shortest-prompt search over GCG and the Adversarial Compression Ratio.

ACR(s) = tokens of ``s`` / tokens of the shortest prompt after which greedy decoding emits ``s`` exactly; ``s``
counts as memorized when the search succeeded and ACR > 1 (the prompt is shorter than what it makes the model
say). Schwarzschild et al., 2024, "Rethinking LLM Memorization through the Lens of Adversarial Compression",
https://arxiv.org/abs/2404.15146.

MiniPrompt's length search: start at 5 tokens; after a success try one token fewer, after a failure five tokens
more with 1.2x the steps; stop when the next length reaches the shortest success (or ``max_prompt_tokens``) or
falls to the longest failure. When no length succeeds, ACR is reported as target tokens / ``max_prompt_tokens``,
the paper's convention (an upper bound: no shorter prompt was found).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from selfevolve.errors import SelfEvolveError
from selfevolve.evaluate.acr_targets import Target, write_targets
from selfevolve.evaluate.gcg import GCGConfig, GCGResult, gcg
from selfevolve.io import append_jsonl, read_jsonl, write_text
from selfevolve.runtime.model import LocalModel

log = logging.getLogger(__name__)

Optimizer = Callable[..., GCGResult]
"""``optimizer(model, target, n_tokens, config, init=ids) -> GCGResult``: one fixed-length prompt search (GCG)."""


@dataclass
class MiniPromptConfig:
    """MiniPrompt's length search over GCG; the schedule values are the paper code's."""

    gcg: GCGConfig = field(default_factory=GCGConfig)  # steps is the budget of the first length
    start_tokens: int = 5  # first prompt length tried
    max_prompt_tokens: int = 30  # upper bound of the search (MiniPrompt's max_tokens)
    grow_tokens: int = 5  # after a failure, try this many tokens more...
    grow_steps: float = 1.2  # ...with this many times the steps
    # ours, not the paper's (it restarts from random tokens): each length starts from the best prompt so far,
    # its first token dropped after a success, random tokens put in front after a failure
    warm_start: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.start_tokens < self.max_prompt_tokens:
            raise SelfEvolveError(
                f"need 1 <= start_tokens < max_prompt_tokens, got {self.start_tokens} and {self.max_prompt_tokens}"
            )
        if self.grow_tokens < 1 or self.grow_steps < 1:
            raise SelfEvolveError(
                f"grow_tokens must be >= 1 and grow_steps >= 1, got {self.grow_tokens} and {self.grow_steps}"
            )


@dataclass
class Attempt:
    """One GCG run of the search: the length tried, its step budget, and how it went."""

    n_tokens: int
    budget: int
    success: bool
    steps: int
    seconds: float
    loss: float


@dataclass
class ACRResult:
    """The audit of one target string."""

    id: str
    set: str
    target: str
    target_tokens: int
    prompt_tokens: int | None  # length of the shortest successful prompt; None when none succeeded
    acr: float  # target_tokens / prompt_tokens; on failure target_tokens / max_prompt_tokens (an upper bound)
    memorized: bool  # success and acr > 1
    success: bool
    prompt: str | None
    prompt_ids: list[int] | None
    steps: int  # GCG steps over the whole search
    seconds: float
    settings: dict  # the MiniPromptConfig the search ran with (a resumed audit reuses only equal settings)
    attempts: list[Attempt] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def minprompt_search(
    model: LocalModel,
    target: str | Target,
    config: MiniPromptConfig | None = None,
    optimizer: Optimizer = gcg,
    on_length: Callable[[int, int], None] | None = None,
) -> ACRResult:
    """MiniPrompt: the shortest prompt found (by ``optimizer``) that makes the model emit ``target``, and its ACR.

    ``on_length(n_tokens, steps)`` is called before each prompt length is tried (a search takes minutes)."""
    config = config or MiniPromptConfig()
    item = target if isinstance(target, Target) else Target("target", target)
    if not item.text.strip():
        raise SelfEvolveError("the target is empty; pass the text the model should emit")
    target_tokens = len(model.tokenizer(item.text, add_special_tokens=False)["input_ids"])
    began = time.perf_counter()
    n, low, high, budget = config.start_tokens, 0, config.max_prompt_tokens, config.gcg.steps
    best: GCGResult | None = None
    attempts: list[Attempt] = []
    init: list[int] = []
    while True:
        if on_length is not None:
            on_length(n, budget)
        result = optimizer(model, item.text, n, replace(config.gcg, steps=budget), init=init)
        if config.warm_start:
            init = result.prompt_ids
        attempts.append(Attempt(n, budget, result.success, result.steps, result.seconds, result.loss))
        log.info("%s: %d prompt tokens, %s after %d steps", item.id, n, result.success, result.steps)
        if result.success:
            best, high, following = result, n, n - 1
        else:
            low, following = n, n + config.grow_tokens
            budget = int(budget * config.grow_steps)
        if following >= high or following <= low:
            break
        n = following
    prompt_tokens = high if best is not None else None
    acr = target_tokens / (prompt_tokens or config.max_prompt_tokens)
    return ACRResult(
        id=item.id,
        set=item.set,
        target=item.text,
        target_tokens=target_tokens,
        prompt_tokens=prompt_tokens,
        acr=acr,
        memorized=best is not None and acr > 1,
        success=best is not None,
        prompt=best.prompt if best else None,
        prompt_ids=best.prompt_ids if best else None,
        steps=sum(a.steps for a in attempts),
        seconds=time.perf_counter() - began,
        settings=settings_of(config),
        attempts=attempts,
    )


def settings_of(config: MiniPromptConfig) -> dict:
    """The search settings as JSON values, the form a resume file stores and compares them in."""
    return json.loads(json.dumps(asdict(config)))


def _completed(path: Path, model: LocalModel, settings: dict) -> dict[tuple[str, str], dict]:
    """Records in a resume file searched with ``settings``, keyed by (id, target); records of other settings are
    left in the file but not reused. A torn last line (a crash mid-write) is dropped."""
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    if lines:
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            write_text(path, "".join(f"{kept}\n" for kept in lines[:-1]))
    done = {}
    for _, record in read_jsonl(path):
        if record.get("model") != model.revision:
            raise SelfEvolveError(
                f"resume file {path} holds results of model {record.get('model')!r}, not {model.revision!r}; "
                "use another output file"
            )
        if record.get("settings") == settings:
            done[(record["id"], record["target"])] = record
    return done


def as_targets(targets: Iterable[str | Target]) -> list[Target]:
    """Strings become targets ``t0, t1, ...``; a target list must not be empty or hold empty texts."""
    items = [t if isinstance(t, Target) else Target(f"t{i}", t) for i, t in enumerate(targets)]
    if not items:
        raise SelfEvolveError("no targets to audit; pass at least one string")
    for item in items:
        if not isinstance(item.text, str) or not item.text.strip():
            raise SelfEvolveError(f"target {item.id!r} is empty; every target needs some text")
    return items


def acr_audit(
    model: LocalModel,
    targets: Sequence[str | Target],
    config: MiniPromptConfig | None = None,
    progress: bool = True,
    resume_file: str | Path | None = None,
) -> list[ACRResult | dict]:
    """MiniPrompt over every target, in order. With ``resume_file`` (JSONL) each finished target is appended to it,
    and targets already there with the same id, text, model and search settings are not searched again (their
    stored records come back as dicts)."""
    from tqdm import tqdm

    config = config or MiniPromptConfig()
    items = as_targets(targets)
    path = Path(resume_file) if resume_file is not None else None
    done = _completed(path, model, settings_of(config)) if path is not None else {}
    results: list[ACRResult | dict] = []
    bar = tqdm(items, desc="acr", unit="target", disable=not progress)
    for item in bar:
        if (item.id, item.text) in done:
            results.append(done[(item.id, item.text)])
            continue
        result = minprompt_search(
            model,
            item,
            config,
            on_length=lambda n, steps, i=item.id: bar.set_postfix_str(
                f"{i}: {n} prompt tokens, <= {steps} steps"
            ),
        )
        results.append(result)
        bar.set_postfix_str(f"{item.id}: acr {result.acr:.2f}{' memorized' if result.memorized else ''}")
        if path is not None:
            append_jsonl(path, {"model": model.revision, **result.as_dict()})
    return results


def as_rows(records: Sequence[ACRResult | dict], model: LocalModel) -> list[dict]:
    """Audit records as dicts in the resume file's form: a fresh result gains the model's revision."""
    return [r if isinstance(r, dict) else {"model": model.revision, **r.as_dict()} for r in records]


@dataclass
class AuditReport:
    """One audit: a row per target (see :func:`as_rows`), the summary per target set, the memorized targets,
    and the histogram's file when one was drawn."""

    rows: list[dict]
    summary: list[dict]
    memorized: list[Target]
    histogram: Path | None = None


def audit_memorization(
    model: LocalModel,
    targets: Sequence[str | Target],
    config: MiniPromptConfig | None = None,
    *,
    resume_file: str | Path | None = None,
    histogram_file: str | Path | None = None,
    memorized_file: str | Path | None = None,
    progress: bool = True,
) -> AuditReport:
    """:func:`acr_audit` (resumable through ``resume_file``), summarized per set; draws the ACR histogram to
    ``histogram_file`` and writes the memorized targets to ``memorized_file`` (a document file for
    ``inject``) when given."""
    rows = as_rows(acr_audit(model, targets, config, progress, resume_file), model)
    memorized = [Target(r["id"], r["target"], r["set"]) for r in rows if r["memorized"]]
    if memorized_file is not None:
        write_targets(memorized, memorized_file)
    drawn = histogram(rows, histogram_file) if histogram_file is not None else None
    return AuditReport(rows, summarize(rows), memorized, drawn)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(records: Sequence[ACRResult | dict]) -> list[dict]:
    """Per target set: targets, share memorized, share found, seconds per target, and two means kept apart:
    ``mean_acr_memorized``, the real ratios of the memorized targets, and ``mean_bound``, the upper bounds
    (target tokens / the search cap) of the targets for which no prompt was found. A mean over no target is
    None; a prompt found but not shorter than its target (ACR <= 1) counts in neither mean."""
    rows = [r.as_dict() if isinstance(r, ACRResult) else r for r in records]
    table = []
    for name in dict.fromkeys(r["set"] for r in rows):
        group = [r for r in rows if r["set"] == name]
        table.append(
            {
                "set": name,
                "targets": len(group),
                "memorized": sum(r["memorized"] for r in group) / len(group),
                "mean_acr_memorized": _mean([r["acr"] for r in group if r["memorized"]]),
                "mean_bound": _mean([r["acr"] for r in group if not r["success"]]),
                "success": sum(r["success"] for r in group) / len(group),
                "seconds_per_target": sum(r["seconds"] for r in group) / len(group),
            }
        )
    return table


def histogram(
    records: Sequence[ACRResult | dict], path: str | Path, title: str = "ACR by target set"
) -> Path:
    """A PNG histogram of ACR per target set, with the memorization threshold ACR = 1 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r.as_dict() if isinstance(r, ACRResult) else r for r in records]
    sets = list(dict.fromkeys(r["set"] for r in rows))
    top = max([2.0] + [r["acr"] for r in rows])
    bins = [i * top / 20 for i in range(21)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist([[r["acr"] for r in rows if r["set"] == s] for s in sets], bins=bins, label=sets, stacked=True)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1, label="ACR = 1")
    ax.set_xlabel("adversarial compression ratio (target tokens / prompt tokens)")
    ax.set_ylabel("targets")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
