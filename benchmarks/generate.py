"""Benchmark ``generate``: our batched ``LocalModel.generate`` against raw ``model.generate`` on the same batch.

Rows: tokens/s of (a) raw transformers ``generate`` on a left-padded batch of 8, (b) ours on the same 8
prompts in one batch, (c) ours one prompt at a time. Every call generates exactly ``--new-tokens`` tokens
(``ignore_eos``), greedy, so all three do the same work; measurements are interleaved and the median is kept.

    selfevolve bench generate [--model NAME] [--new-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks._common import print_table, write_results
from selfevolve.runtime import DEFAULT_MODEL, load_model

PROMPTS = [
    "What is the capital of France?",
    "Explain in two sentences why the sky is blue.",
    "Write a Python function that reverses a string.",
    "Give three tips for a good night's sleep.",
    "What is the difference between a list and a tuple in Python?",
    "Summarize the plot of Romeo and Juliet.",
    "How many legs does a spider have?",
    "Translate 'good morning' into Spanish and French.",
]


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="selfevolve bench generate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)

    model = load_model(args.model, batch_size=len(PROMPTS))
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    encoded = [model.encode(chat) for chat in chats]
    input_ids, attention_mask = model._left_pad(encoded)
    new = args.new_tokens

    def raw_batch():
        with torch.inference_mode():
            output = model.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=model.tokenizer.pad_token_id,
            )
        return output[:, input_ids.shape[1] :].tolist()

    def ours_batch():
        return [c.token_ids for c in model.generate(chats, max_new_tokens=new, ignore_eos=True)]

    def ours_single():
        return [model.generate([chat], max_new_tokens=new, ignore_eos=True)[0].token_ids for chat in chats]

    runs = {
        "raw model.generate, batch 8": raw_batch,
        "ours, batch 8": ours_batch,
        "ours, batch 1": ours_single,
    }
    ours_batch()
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, list] = {}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            seconds, outputs[name] = _timed(fn)
            times[name].append(seconds)

    tokens = len(PROMPTS) * new
    rows = []
    for name in runs:
        seconds = statistics.median(times[name])
        rows.append({"config": name, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds})
    speed = {row["config"]: row["tokens_per_s"] for row in rows}
    summary = {
        "ours_vs_raw_batch8": speed["ours, batch 8"] / speed["raw model.generate, batch 8"],
        "batch8_vs_batch1": speed["ours, batch 8"] / speed["ours, batch 1"],
        "same_tokens_as_raw": outputs["ours, batch 8"] == outputs["raw model.generate, batch 8"],
    }
    print_table(
        f"generate: {model.revision}, {len(PROMPTS)} prompts x {new} new tokens, median of {args.repeats}",
        rows,
    )
    print_table("ratios (targets: ours/raw >= 0.9, batch 8/batch 1 >= 3)", [summary])
    path = write_results(
        "generate",
        rows,
        out_dir=args.out,
        model=model.revision,
        new_tokens=new,
        repeats=args.repeats,
        summary=summary,
    )
    print(f"wrote {path}")
