"""Pass-key retrieval in a haystack under KV-cache compression: full vs SnapKV vs StreamingLLM vs random.

A 5-digit pass key ("The pass key is 60494. Remember it. 60494 is the pass key.") is hidden at a given depth
of Paul Graham essays; the prompt ends with the question and the answer prefix "The pass key is", so the
question lies in SnapKV's observation window (query-aware, the paper's setting). ``snapkv-agnostic`` instead
compresses the context before the question and appends the question to the compressed cache (query-agnostic).
Greedy, up to ``--new-tokens`` tokens; correct when the key's digits appear in the answer.

Everything is measured through the path a user calls: ``LocalModel.generate(prompt,
kv_compression=policy)`` (query-aware), or ``prefill`` / ``extend`` / ``decode`` (query-agnostic). Accuracy,
cache bytes, ``compress_ms`` and ``prefill_ms`` come from that call and its policy's ``KVReport``; on the first
``--timing-runs`` needles of a length every method decodes ``--decode-tokens`` tokens (``ignore_eos``) for
``decode_ms_per_token``. Methods run interleaved (a different one first on each needle). The cross-check
rebuilds every cache from a recorded full prefill with the policy's own ``compress`` and decodes it by hand;
the run fails if the two paths disagree on a cache size or a retrieved key, and ``consistent`` is the share
of needles whose answer tokens agree exactly. kvpress's ``SnapKVPress`` (own virtualenv) prefills the prompt
minus its last token, so its window ends one token early: the ``snapkv-kvpress-inputs`` rows run our SnapKV on
exactly those inputs for a like-for-like comparison. One torch thread by default: on a shared 2-core machine a
second intra-op thread makes every step wait for a descheduled partner (3-10x slower and far noisier here).

    selfevolve bench needle [--lengths 1024 2048 4096 8192] [--needles 20] [--budgets 512 1024]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import DynamicCache

from benchmarks._common import print_table, write_results
from selfevolve.errors import SelfEvolveError
from selfevolve.runtime import DEFAULT_MODEL, cache_dir, load_model
from selfevolve.runtime.kv import (
    FullKV,
    KVPolicy,
    PromptCache,
    RandomKV,
    SnapKV,
    StreamingLLM,
    decode,
    extend,
    prefill,
)
from selfevolve.runtime.kv.base import ExpandedLayer, attention_layers, kept_mask

ROOT = Path(__file__).resolve().parent.parent
KVPRESS_VENV = ROOT / ".kvpress-venv"
KVPRESS_PINS = ["kvpress==0.5.5", "transformers>=4.56,<5.3", "torch==2.13.0"]
INTRO = (
    "There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the pass key.\n\n"
)
QUESTION = "\n\nWhat is the pass key?"
ANSWER_PREFIX = "The pass key is"
METHODS = ("full", "snapkv", "streaming", "random", "snapkv-agnostic")


@dataclass
class Needle:
    length: int
    depth: float
    key: str
    ids: list[int]
    question: int  # tokens of the question, chat-template tail and answer prefix that end ``ids``
    text: str  # the rendered prompt a user would pass to ``generate`` (``ids`` is its tokenization)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfevolve bench needle", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--budgets", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--needles",
        type=int,
        nargs="+",
        default=[20],
        help="prompts per length (one value, or one per length)",
    )
    parser.add_argument(
        "--snapkv-kernels", type=int, nargs="+", default=[7, 15], help="one SnapKV run per kernel"
    )
    parser.add_argument("--haystack", default=str(ROOT.parent / "shared" / "data" / "haystack"))
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument(
        "--timing-runs", type=int, default=2, help="prompts per length timed on the real path"
    )
    parser.add_argument("--timing-lengths", type=int, nargs="+", help="lengths to time (default: all)")
    parser.add_argument("--decode-tokens", type=int, default=16, help="tokens decoded per timing run")
    parser.add_argument("--kvpress", choices=["auto", "skip"], default="auto")
    parser.add_argument("--kvpress-length", type=int, default=4096, help="context length of the kvpress rows")
    parser.add_argument("--kvpress-budgets", type=int, nargs="+", default=[512])
    parser.add_argument("--kvpress-full", action="store_true", help="also run kvpress's path without a press")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steady timings on a shared machine)"
    )
    parser.add_argument(
        "--cross-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also rebuild every cache from a recorded full prefill and fail the run if the two paths disagree",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results")
    parser.add_argument(
        "--docs-img",
        default=str(ROOT / "docs" / "img" / "needle_heatmap.png"),
        help="where the heatmap is copied for the docs ('' to skip)",
    )
    return parser


def load_haystack(directory: str) -> str:
    files = sorted(Path(directory).glob("*.txt"))
    if not files:
        raise SelfEvolveError(f"no .txt files in haystack directory {directory}; pass --haystack DIR")
    return "\n\n".join(path.read_text(errors="replace") for path in files)


def build_needle(lm, haystack: list[int], length: int, depth: float, rng: random.Random) -> Needle:
    """A prompt of about ``length`` tokens with a pass key at ``depth`` (0: start of the essays, 1: end)."""
    key = str(rng.randint(10000, 99999))
    needle = f"\n\nThe pass key is {key}. Remember it. {key} is the pass key.\n\n"

    def render(context: str) -> str:
        return lm.render([{"role": "user", "content": INTRO + context + QUESTION}]) + ANSWER_PREFIX

    def tokenize(text: str) -> list[int]:
        return lm.tokenizer(text, add_special_tokens=False)["input_ids"]

    rendered = lm.render([{"role": "user", "content": QUESTION}])
    question = rendered[rendered.index(QUESTION) :] + ANSWER_PREFIX

    filler = max(length - len(tokenize(render(needle))), 16)
    start = rng.randrange(0, len(haystack) - filler)
    text = lm.tokenizer.decode(haystack[start : start + filler])
    cut = int(depth * len(text))
    boundary = text.rfind(". ", 0, cut)
    cut = boundary + 2 if boundary > 0 else cut
    prompt = render(text[:cut] + needle + text[cut:])
    return Needle(length, depth, key, tokenize(prompt), len(tokenize(question)), prompt)


def policy_for(method: str, budget: int | None) -> KVPolicy:
    """The policy of a run label: ``full``, ``snapkv[-agnostic][-kK]`` (kernel 7 unless K), ``streaming``..."""
    if method.startswith("snapkv"):
        return SnapKV(budget=budget, kernel=int(method.rsplit("-k", 1)[1]) if "-k" in method else 7)
    if method == "streaming":
        return StreamingLLM(sinks=4, recent=budget - 4)
    return RandomKV(budget=budget) if method == "random" else FullKV()


@contextlib.contextmanager
def recording(model) -> Iterator[dict]:
    """Record each attention layer's inputs during a prefill: {layer index: (module, hidden, (cos, sin))}."""
    records: dict = {}

    def hook(module, args, kwargs, output):
        records[module.layer_idx] = (module, kwargs["hidden_states"], kwargs["position_embeddings"])

    handles = [module.register_forward_hook(hook, with_kwargs=True) for module in attention_layers(model)]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def compressed_copy(
    model, full: PromptCache, records: dict, policy: KVPolicy | None, ids: torch.Tensor, question: int = 0
) -> tuple[PromptCache, float]:
    """The cache ``policy`` would have produced at prefill, built from the recorded full prefill, and the
    milliseconds its ``compress`` took over all layers (the work its hooks add to a prefill).

    With ``question`` > 0 (query-agnostic), only the prompt before its last ``question`` tokens is compressed,
    as a prefill of the context alone would be (attention is causal), then the question is appended uncompressed.
    """
    width = ids.shape[1] - question
    cache = DynamicCache(
        config=model.config
    )  # new layers over the recorded tensors: decoding leaves them intact
    compress_seconds = 0.0
    padding = full.mask[:, :width].bool()  # (1, T'): one unpadded prompt
    for index, layer in enumerate(full.cache.layers):
        module, hidden, (cos, sin) = records[index]
        keys, values = layer.keys[:, :, :width], layer.values[:, :, :width]  # (1, Hkv, T', D)
        embeddings = (cos[:, :width], sin[:, :width])
        start = time.perf_counter()
        result = (
            None
            if policy is None
            else policy.compress(module, hidden[:, :width], keys, values, padding, embeddings)
        )
        compress_seconds += time.perf_counter() - start
        keys, values = (keys, values) if result is None else result[:2]
        groups = keys.shape[1] // layer.keys.shape[1]
        if groups > 1:
            cache.layers[index] = ExpandedLayer(keys, values, groups)
        else:
            cache.layers[index].lazy_initialization(keys, values)
            cache.layers[index].keys, cache.layers[index].values = keys, values
    lengths = full.positions - question
    prompt = PromptCache(cache, kept_mask(lengths, cache.get_seq_length()), lengths, full.logits, policy)
    return (extend(model, prompt, ids[:, width:]) if question else prompt), 1000 * compress_seconds


def runs_for(args, length: int) -> list[tuple[str, int | None]]:
    """(label, budget) of every run at ``length``; budgets at or above the length would equal the full cache."""
    labels = []
    for method in args.methods:
        if method.startswith("snapkv"):
            labels += [method if k == 7 else f"{method}-k{k}" for k in args.snapkv_kernels]
        elif method != "full":
            labels.append(method)
    runs = [("full", None)] if "full" in args.methods else []
    return runs + [(label, b) for b in args.budgets if b < length for label in labels]


def answer_ids(tokens: list[int], new_tokens: int, eos: set[int]) -> list[int]:
    """The first ``new_tokens`` tokens, cut at the first end token (the answer greedy decoding gives)."""
    tokens = tokens[:new_tokens]
    return tokens[: next((i for i, t in enumerate(tokens) if t in eos), len(tokens))]


@dataclass
class Outcome:
    """One method on one needle, through the user's path."""

    tokens: list[int]
    text: str
    kv_bytes: int
    compress_ms: float
    prefill_ms: float
    decode_ms: float | None  # per token, on timed needles
    consistent: bool | None = None  # same tokens as the cross-check's recorded path


def run_user_path(lm, needle: Needle, run: tuple[str, int | None], args, timed: bool) -> Outcome:
    """Answer ``needle`` the way a user would: ``LocalModel.generate(kv_compression=...)`` (query-aware), or
    ``prefill`` of the context, ``extend`` by the question and ``decode`` (query-agnostic).

    Bytes, compression and prefill times come from the policy's report of that very call. A timed needle
    decodes ``--decode-tokens`` tokens past any end token, so every method decodes the same count.
    """
    policy = policy_for(*run)
    count = max(args.new_tokens, args.decode_tokens) if timed else args.new_tokens
    start = time.perf_counter()
    if "agnostic" in run[0]:
        ids = torch.tensor([needle.ids], device=lm.device)
        context = prefill(lm.model, ids[:, : -needle.question], policy=policy)
        prompt = extend(lm.model, context, ids[:, -needle.question :])
        middle, kv_bytes = time.perf_counter(), prompt.nbytes  # the cache the answer starts from
        eos = () if timed else lm.eos_token_ids
        tokens = decode(lm.model, prompt, count, eos_token_ids=eos)[0].tolist()
        record = policy.last_report.last
        prefill_ms, decode_seconds = 1000 * (middle - start), time.perf_counter() - middle
    else:
        (completion,) = lm.generate(
            [needle.text], max_new_tokens=count, temperature=0.0, ignore_eos=timed, kv_compression=policy
        )
        total = time.perf_counter() - start
        tokens, record = completion.token_ids, policy.last_report.last
        kv_bytes, prefill_ms = record.kept_bytes, record.prefill_ms
        decode_seconds = total - prefill_ms / 1000
    answer = answer_ids(tokens, args.new_tokens, lm.eos_token_ids)
    decode_ms = 1000 * decode_seconds / max(count - 1, 1) if timed else None
    text = lm.tokenizer.decode(answer, skip_special_tokens=True)
    return Outcome(answer, text, kv_bytes, record.compress_ms, prefill_ms, decode_ms)


def cross_check(lm, needle: Needle, runs, args) -> dict:
    """Each method's answer tokens and cache bytes from the recorded full prefill (the policies' own
    ``compress`` on recorded tensors, decoded by hand): an independent path the user path must agree with."""
    ids = torch.tensor([needle.ids], device=lm.device)
    with recording(lm.model) as records:
        full = prefill(lm.model, ids)
    expected = {}
    for run in runs:
        question = needle.question if "agnostic" in run[0] else 0
        prompt, _ = compressed_copy(lm.model, full, records, policy_for(*run), ids, question)
        nbytes = prompt.nbytes  # before decoding appends to the cache
        tokens = decode(lm.model, prompt, args.new_tokens, eos_token_ids=lm.eos_token_ids)[0].tolist()
        expected[run] = (answer_ids(tokens, args.new_tokens, lm.eos_token_ids), nbytes)
    return expected


def score_length(lm, needles: list[Needle], runs, args) -> tuple[dict, list[str]]:
    """Every method on every needle through the user's path, interleaved; and the cross-check's disagreements."""
    results = {run: [] for run in runs}
    disagreements = []
    timed_lengths = args.timing_lengths or [needles[0].length]
    for number, needle in enumerate(needles):
        if lm.encode(needle.text) != needle.ids:
            raise SelfEvolveError(f"needle {number} at {needle.length} does not re-tokenize to its own ids")
        timed = number < args.timing_runs and needle.length in timed_lengths
        order = runs[number % len(runs) :] + runs[: number % len(runs)]  # interleave, for fair timings
        outcomes = {run: run_user_path(lm, needle, run, args, timed) for run in order}
        expected = cross_check(lm, needle, runs, args) if args.cross_check else {}
        for run in runs:
            outcome = outcomes[run]
            results[run].append(outcome)
            if run in expected:
                tokens, nbytes = expected[run]
                hit = needle.key in lm.tokenizer.decode(tokens, skip_special_tokens=True)
                if nbytes != outcome.kv_bytes or hit != (needle.key in outcome.text):
                    disagreements.append(
                        f"{run[0]}@{run[1]} len {needle.length} needle {number}: user path "
                        f"{outcome.kv_bytes} B {outcome.text!r}, recorded path {nbytes} B {tokens}"
                    )
                outcome.consistent = tokens == outcome.tokens
        line = " ".join(f"{m}{b or ''}={int(needle.key in outcomes[(m, b)].text)}" for m, b in runs)
        print(
            f"  len {needle.length} needle {number} depth {needle.depth:.2f} key {needle.key}: {line}",
            flush=True,
        )
    return results, disagreements


def same_inputs_as_kvpress(lm, needles: list[Needle], args) -> list[dict]:
    """Our SnapKV on exactly kvpress's inputs: the prompt minus its last token is compressed (so the window
    ends where kvpress's does), then the last token is appended and the answer decoded."""
    rows = []
    for budget in args.kvpress_budgets:
        for kernel in args.snapkv_kernels:
            answers, sizes = [], []
            for needle in needles:
                ids = torch.tensor([needle.ids], device=lm.device)
                context = prefill(lm.model, ids[:, :-1], policy=SnapKV(budget=budget, kernel=kernel))
                sizes.append(context.nbytes)  # as kvpress measures it: the compressed context alone
                prompt = extend(lm.model, context, ids[:, -1:])
                tokens = decode(lm.model, prompt, args.new_tokens, eos_token_ids=lm.eos_token_ids)[0].tolist()
                answers.append(lm.tokenizer.decode(answer_ids(tokens, args.new_tokens, lm.eos_token_ids)))
            hits = [n.key in a for n, a in zip(needles, answers, strict=True)]
            rows.append(
                {
                    "method": "snapkv-kvpress-inputs" + ("" if kernel == 7 else f"-k{kernel}"),
                    "budget": budget,
                    "length": needles[0].length,
                    "prompt_tokens": round(statistics.mean(len(n.ids) for n in needles)),
                    "needles": len(needles),
                    "accuracy": sum(hits) / len(hits),
                    "kv_bytes": round(statistics.mean(sizes)),
                    "answers": answers,
                    "by_depth": {},
                }
            )
    return rows


def agreement(ours: list[dict], theirs: list[dict]) -> list[dict]:
    """For each kernel and budget: the share of prompts on which our answer equals kvpress's, word for word."""
    table = []
    for row in ours:
        label = row["method"].replace("snapkv-kvpress-inputs", "kvpress-snapkv")
        match = next((t for t in theirs if t["method"] == label and t["budget"] == row["budget"]), None)
        if match and "answers" in match:
            pairs = zip(row["answers"], match["answers"], strict=True)
            same = sum(a.strip() == b.strip() for a, b in pairs)
            table.append(
                {
                    "kernel": row["method"],
                    "budget": row["budget"],
                    "ours": row["accuracy"],
                    "kvpress": match["accuracy"],
                    "same_answer": same / len(row["answers"]),
                }
            )
    return table


def heatmap(rows: list[dict], depths: list[float], lengths: list[int], paths: list[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        row for row in rows if not row["method"].startswith("kvpress") and "kvpress" not in row["method"]
    ]
    keys = list(
        dict.fromkeys(
            (row["method"], row["budget"]) for row in sorted(panels, key=lambda r: r["budget"] or 0)
        )
    )
    cols = min(4, len(keys))
    nrows = -(-len(keys) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.8 * nrows), squeeze=False)
    for ax in axes.flat[len(keys) :]:
        ax.axis("off")
    for ax, (method, budget) in zip(axes.flat, keys, strict=False):
        grid = torch.full((len(depths), len(lengths)), float("nan"))
        for row in panels:
            if (row["method"], row["budget"]) == (method, budget) and row["length"] in lengths:
                for d, depth in enumerate(depths):
                    grid[d, lengths.index(row["length"])] = row["by_depth"].get(f"{depth:g}", float("nan"))
        ax.imshow(grid.numpy(), vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        for d in range(len(depths)):
            for column in range(len(lengths)):
                if not grid[d, column].isnan():
                    ax.text(column, d, f"{grid[d, column]:.0%}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
        ax.set_title(method if budget is None else f"{method} @ {budget}", fontsize=9)
        ax.set_xlabel("context tokens", fontsize=7)
        ax.set_ylabel("needle depth", fontsize=7)
    fig.tight_layout()
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    plt.close(fig)


def kvpress_python() -> Path:
    """The interpreter of the kvpress virtualenv, created on first use (kvpress pins transformers < 5.3)."""
    python = KVPRESS_VENV / "bin" / "python"
    if not python.exists():
        shutil.rmtree(KVPRESS_VENV, ignore_errors=True)
        subprocess.run([shutil.which("python3.11") or "python3", "-m", "venv", str(KVPRESS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *KVPRESS_PINS], check=True)
    return python


def run_kvpress(args, needles: list[Needle], model_dir: Path) -> tuple[list[dict], dict]:
    """kvpress's SnapKVPress on the same token ids, in its own virtualenv: rows, and a status with reasons."""
    if args.kvpress == "skip":
        return [], {"status": "skipped", "reason": "--kvpress skip"}
    if not (model_dir / "config.json").is_file():
        return [], {"status": "not run", "reason": f"no local safetensors copy of the model at {model_dir}"}
    try:
        python = kvpress_python()
    except (OSError, subprocess.CalledProcessError) as err:
        return [], {"status": "not run", "reason": f"cannot create {KVPRESS_VENV}: {err}"}
    with tempfile.TemporaryDirectory() as tmp:
        request, reply = Path(tmp) / "prompts.json", Path(tmp) / "results.json"
        payload = {
            "model_dir": str(model_dir),
            "budgets": args.kvpress_budgets,
            "kernels": args.snapkv_kernels,
            "full": args.kvpress_full,
            "threads": args.threads,
            "new_tokens": args.new_tokens,
            "prompts": [{"ids": n.ids, "key": n.key, "depth": n.depth, "length": n.length} for n in needles],
        }
        request.write_text(json.dumps(payload))
        side = ROOT / "benchmarks" / "_kvpress_side.py"
        done = subprocess.run(
            [str(python), str(side), str(request), str(reply)], capture_output=True, text=True
        )
        if done.returncode != 0 or not reply.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return [], {"status": "failed", "reason": " | ".join(tail)}
        result = json.loads(reply.read_text())
    return result["rows"], {"status": "ran", **result["versions"]}


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    if any(b < 33 for b in args.budgets) or min(args.needles) < 1:
        raise SelfEvolveError(
            "budgets must exceed SnapKV's 32-token window, and --needles must be at least 1"
        )
    if len(args.needles) not in (1, len(args.lengths)):
        raise SelfEvolveError(
            f"--needles takes one count or one per length ({len(args.lengths)}), got {args.needles}"
        )
    counts = dict(
        zip(args.lengths, args.needles * len(args.lengths) if len(args.needles) == 1 else args.needles)
    )
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    haystack = lm.tokenizer(load_haystack(args.haystack), add_special_tokens=False)["input_ids"]
    rng = random.Random(args.seed)
    rows: list[dict] = []
    failures: list[str] = []
    kvpress_needles: list[Needle] = []
    for length in args.lengths:
        needles = [
            build_needle(lm, haystack, length, args.depths[i % len(args.depths)], rng)
            for i in range(counts[length])
        ]
        runs = runs_for(args, length)
        if length == args.kvpress_length:
            kvpress_needles = needles
        scores, disagreements = score_length(lm, needles, runs, args)
        failures += disagreements
        for method, budget in runs:
            outcomes = scores[(method, budget)]
            hits = [n.key in o.text for n, o in zip(needles, outcomes, strict=True)]
            by_depth = {}
            for depth in args.depths:
                at_depth = [h for h, n in zip(hits, needles, strict=True) if n.depth == depth]
                if at_depth:
                    by_depth[f"{depth:g}"] = sum(at_depth) / len(at_depth)
            timed = [o for o in outcomes if o.decode_ms is not None]
            checked = [o.consistent for o in outcomes if o.consistent is not None]
            rows.append(
                {
                    "method": method,
                    "budget": budget,
                    "length": length,
                    "prompt_tokens": round(statistics.mean(len(n.ids) for n in needles)),
                    "needles": len(needles),
                    "accuracy": sum(hits) / len(needles),
                    "kv_bytes": round(statistics.mean(o.kv_bytes for o in outcomes)),
                    "compress_ms": statistics.median(o.compress_ms for o in outcomes),
                    "prefill_ms": statistics.median(o.prefill_ms for o in timed) if timed else None,
                    "decode_ms_per_token": statistics.median(o.decode_ms for o in timed) if timed else None,
                    "consistent": sum(checked) / len(checked) if checked else None,
                    "by_depth": by_depth,
                }
            )
        print_table(f"needle @ {length} tokens", [r for r in rows if r["length"] == length], COLUMNS)
    model_dir = Path(args.model) if Path(args.model).is_dir() else cache_dir() / "models" / args.model
    kvpress_rows, kvpress = run_kvpress(args, kvpress_needles, model_dir) if kvpress_needles else ([], {})
    ours = same_inputs_as_kvpress(lm, kvpress_needles, args) if kvpress_rows else []
    rows += kvpress_rows + ours
    print_table("needle retrieval under KV compression", rows, COLUMNS)
    print(f"kvpress: {kvpress}")
    kvpress["agreement"] = agreement(ours, kvpress_rows)
    if kvpress["agreement"]:
        print_table("SnapKV: ours against kvpress on identical inputs", kvpress["agreement"], AGREEMENT)
    out = Path(args.out)
    images = [out / "needle_heatmap.png"] + ([Path(args.docs_img)] if args.docs_img else [])
    heatmap(rows, args.depths, args.lengths, images)
    path = write_results(
        "needle",
        rows,
        out_dir=out,
        config=vars(args),
        model=lm.revision,
        kvpress=kvpress,
        cross_check=failures,
    )
    print(f"wrote {path} and {out / 'needle_heatmap.png'}")
    if failures:
        raise SelfEvolveError(
            f"the user path and the recorded path disagree on {len(failures)} answers or cache sizes "
            f"(first: {failures[0]}); see cross_check in {path}"
        )


COLUMNS = [
    "method",
    "budget",
    "length",
    "accuracy",
    "kv_bytes",
    "compress_ms",
    "prefill_ms",
    "decode_ms_per_token",
    "consistent",
]
AGREEMENT = ["kernel", "budget", "ours", "kvpress", "same_answer"]

if __name__ == "__main__":
    main()
