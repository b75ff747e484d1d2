"""Pass-key retrieval in a haystack under KV-cache compression: full vs SnapKV vs StreamingLLM vs random.

A 5-digit pass key ("The pass key is 60494. Remember it. 60494 is the pass key.") is hidden at a given depth
of Paul Graham essays; the prompt ends with the question and the answer prefix "The pass key is", so the
question lies in SnapKV's observation window (query-aware, the paper's setting). ``snapkv-agnostic`` instead
compresses the context before the question and appends the question to the compressed cache (query-agnostic).
Greedy, up to ``--new-tokens`` tokens; correct when the key's digits appear in the answer.

Accuracy: each prompt is prefilled once with the full cache while the attention inputs of every layer are
recorded; each policy then compresses those records with its own ``compress`` (the very function its hooks
call, so the cache is identical; ``compress_ms`` is its time) and decodes on its own cache. Speed and memory:
``--timing-runs`` prompts per length go through the real path (``prefill(model, ids, policy)`` then
``decode``) for every method, interleaved; rows report medians, and ``consistent`` says whether that path gave
the same greedy tokens as the recorded one. One torch thread by default: on a shared 2-core machine a second
intra-op thread makes every step wait for a descheduled partner (3-10x slower and far noisier here).

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

    def render(context: str) -> list[int]:
        chat = [{"role": "user", "content": INTRO + context + QUESTION}]
        return lm.tokenizer(lm.render(chat) + ANSWER_PREFIX, add_special_tokens=False)["input_ids"]

    rendered = lm.render([{"role": "user", "content": QUESTION}])
    question = rendered[rendered.index(QUESTION) :] + ANSWER_PREFIX

    filler = max(length - len(render(needle)), 16)
    start = rng.randrange(0, len(haystack) - filler)
    text = lm.tokenizer.decode(haystack[start : start + filler])
    cut = int(depth * len(text))
    boundary = text.rfind(". ", 0, cut)
    cut = boundary + 2 if boundary > 0 else cut
    ids = render(text[:cut] + needle + text[cut:])
    return Needle(length, depth, key, ids, len(lm.tokenizer(question, add_special_tokens=False)["input_ids"]))


def policy_for(method: str, budget: int | None) -> KVPolicy | None:
    """The policy of a run label: ``full``, ``snapkv[-agnostic][-kK]`` (kernel 7 unless K), ``streaming``..."""
    if method.startswith("snapkv"):
        return SnapKV(budget=budget, kernel=int(method.rsplit("-k", 1)[1]) if "-k" in method else 7)
    if method == "streaming":
        return StreamingLLM(sinks=4, recent=budget - 4)
    return RandomKV(budget=budget) if method == "random" else None


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


def answer_ids(model, prompt: PromptCache, new_tokens: int, eos: set[int]) -> list[int]:
    tokens = decode(model, prompt, new_tokens, eos_token_ids=eos)[0].tolist()
    return tokens[: next((i for i, t in enumerate(tokens) if t in eos), len(tokens))]


def score_length(lm, needles: list[Needle], runs, args) -> dict:
    """Accuracy, answers and cache bytes of every method on every needle, one recorded prefill per needle."""
    eos = lm.eos_token_ids
    results = {run: {"hits": [], "bytes": [], "answers": [], "compress": []} for run in runs}
    for number, needle in enumerate(needles):
        ids = torch.tensor([needle.ids], device=lm.device)
        with recording(lm.model) as records:
            full = prefill(lm.model, ids)
        for run in runs:
            question = needle.question if "agnostic" in run[0] else 0
            prompt, compress_ms = compressed_copy(lm.model, full, records, policy_for(*run), ids, question)
            results[run]["bytes"].append(prompt.nbytes)
            results[run]["compress"].append(compress_ms)
            tokens = answer_ids(lm.model, prompt, args.new_tokens, eos)
            text = lm.tokenizer.decode(tokens, skip_special_tokens=True)
            results[run]["hits"].append(needle.key in text)
            results[run]["answers"].append(tokens)
        line = " ".join(f"{m}{b or ''}={int(results[(m, b)]['hits'][-1])}" for m, b in runs)
        print(
            f"  len {needle.length} needle {number} depth {needle.depth:.2f} key {needle.key}: {line}",
            flush=True,
        )
    return results


def time_length(lm, needles: list[Needle], runs, args, answers: dict) -> dict:
    """Median prefill ms, decode ms per token and cache bytes of each method on the real (hooked) path."""
    timings = {run: {"prefill": [], "decode": [], "bytes": [], "consistent": True} for run in runs}
    if args.timing_lengths and needles[0].length not in args.timing_lengths:
        return timings
    for number, needle in enumerate(needles[: args.timing_runs]):
        ids = torch.tensor([needle.ids], device=lm.device)
        order = runs[number % len(runs) :] + runs[: number % len(runs)]
        for run in order:
            start = time.perf_counter()
            if "agnostic" in run[0]:  # the context alone is compressed, then the question appended
                context = prefill(lm.model, ids[:, : -needle.question], policy=policy_for(*run))
                prompt = extend(lm.model, context, ids[:, -needle.question :])
            else:
                prompt = prefill(lm.model, ids, policy=policy_for(*run))
            middle = time.perf_counter()
            tokens = decode(lm.model, prompt, args.decode_tokens)[0].tolist()  # exactly decode_tokens tokens
            end = time.perf_counter()
            timings[run]["prefill"].append(1000 * (middle - start))
            timings[run]["decode"].append(1000 * (end - middle) / max(args.decode_tokens - 1, 1))
            timings[run]["bytes"].append(prompt.nbytes)
            reference = answers[run][number][: len(tokens)]
            timings[run]["consistent"] &= tokens[: len(reference)] == reference
    return timings


def heatmap(rows: list[dict], depths: list[float], lengths: list[int], paths: list[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [row for row in rows if not row["method"].startswith("kvpress")]
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
    kvpress_needles: list[Needle] = []
    for length in args.lengths:
        needles = [
            build_needle(lm, haystack, length, args.depths[i % len(args.depths)], rng)
            for i in range(counts[length])
        ]
        runs = runs_for(args, length)
        if length == args.kvpress_length:
            kvpress_needles = needles
        scores = score_length(lm, needles, runs, args)
        timings = time_length(lm, needles, runs, args, {run: scores[run]["answers"] for run in runs})
        for method, budget in runs:
            score, timing = scores[(method, budget)], timings[(method, budget)]
            by_depth = {}
            for depth in args.depths:
                hits = [h for h, n in zip(score["hits"], needles, strict=True) if n.depth == depth]
                if hits:
                    by_depth[f"{depth:g}"] = sum(hits) / len(hits)
            rows.append(
                {
                    "method": method,
                    "budget": budget,
                    "length": length,
                    "prompt_tokens": round(statistics.mean(len(n.ids) for n in needles)),
                    "needles": len(needles),
                    "accuracy": sum(score["hits"]) / len(needles),
                    "kv_bytes": round(statistics.mean(score["bytes"])),
                    "compress_ms": statistics.median(score["compress"]),
                    "prefill_ms": statistics.median(timing["prefill"]) if timing["prefill"] else None,
                    "decode_ms_per_token": statistics.median(timing["decode"]) if timing["decode"] else None,
                    "consistent": timing["consistent"] if timing["prefill"] else None,
                    "by_depth": by_depth,
                }
            )
        print_table(f"needle @ {length} tokens", [r for r in rows if r["length"] == length], COLUMNS)
    model_dir = Path(args.model) if Path(args.model).is_dir() else cache_dir() / "models" / args.model
    kvpress_rows, kvpress = run_kvpress(args, kvpress_needles, model_dir) if kvpress_needles else ([], {})
    rows += kvpress_rows
    print_table("needle retrieval under KV compression", rows, COLUMNS)
    print(f"kvpress: {kvpress}")
    out = Path(args.out)
    images = [out / "needle_heatmap.png"] + ([Path(args.docs_img)] if args.docs_img else [])
    heatmap(rows, args.depths, args.lengths, images)
    path = write_results("needle", rows, out_dir=out, config=vars(args), model=lm.revision, kvpress=kvpress)
    print(f"wrote {path} and {out / 'needle_heatmap.png'}")


COLUMNS = [
    "method",
    "budget",
    "length",
    "accuracy",
    "kv_bytes",
    "prefill_ms",
    "decode_ms_per_token",
    "consistent",
]

if __name__ == "__main__":
    main()
