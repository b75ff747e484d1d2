"""kvpress's SnapKVPress (window 32, the kernels asked for) on the needle benchmark's prompts, in its own venv.

kvpress pins transformers < 5.3, so ``benchmarks/needle.py`` runs this file with
``.kvpress-venv/bin/python`` (created on first use) and passes the exact token ids it used itself. Each prompt
is prefilled without its last token under the press (as kvpress's pipeline prefills a context), then kvpress's
own greedy ``generate_answer`` continues from the last token: compression and decoding are kvpress's code.

    .kvpress-venv/bin/python benchmarks/_kvpress_side.py REQUEST.json REPLY.json
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch
import transformers
from kvpress import SnapKVPress
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, pipeline


def run_prompt(pipe, press, ids: torch.Tensor, new_tokens: int) -> tuple[str, int, float]:
    """Answer text, cache bytes after prefill and prefill ms of one prompt (1, T)."""
    cache = DynamicCache()
    start = time.perf_counter()
    with torch.inference_mode(), press(pipe.model) if press is not None else contextlib.nullcontext():
        pipe.model.model(input_ids=ids[:, :-1], past_key_values=cache)
    prefill_ms = 1000 * (time.perf_counter() - start)
    nbytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    with torch.inference_mode():
        text = pipe.generate_answer(ids[:, -1:], cache, ids.shape[1] - 1, new_tokens)
    return text, nbytes, prefill_ms


def main(request_path: str, reply_path: str) -> None:
    request = json.loads(Path(request_path).read_text())
    torch.set_num_threads(request["threads"])
    tokenizer = AutoTokenizer.from_pretrained(request["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(request["model_dir"], dtype=torch.float32).eval()
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer)
    prompts = request["prompts"]
    runs = [(None, None)] if request["full"] else []
    runs += [(budget, kernel) for budget in request["budgets"] for kernel in request["kernels"]]
    rows = []
    for budget, kernel in runs:
        hits, sizes, times, by_depth, answers = [], [], [], {}, []
        for prompt in prompts:
            ids = torch.tensor([prompt["ids"]])
            context = ids.shape[1] - 1
            # kvpress keeps int(context * (1 - ratio)) positions per head: this ratio keeps exactly `budget`
            ratio = None if budget is None else 1 - (budget + 0.5) / context
            press = None if budget is None else SnapKVPress(ratio, window_size=32, kernel_size=kernel)
            text, nbytes, prefill_ms = run_prompt(pipe, press, ids, request["new_tokens"])
            hits.append(prompt["key"] in text)
            answers.append(text)
            sizes.append(nbytes)
            times.append(prefill_ms)
            by_depth.setdefault(f"{prompt['depth']:g}", []).append(hits[-1])
            print(f"kvpress budget {budget} kernel {kernel} key {prompt['key']}: {text!r}", flush=True)
        label = (
            "kvpress-full" if budget is None else "kvpress-snapkv" + ("" if kernel == 7 else f"-k{kernel}")
        )
        rows.append(
            {
                "method": label,
                "budget": budget,
                "length": prompts[0]["length"],
                "prompt_tokens": round(statistics.mean(len(p["ids"]) for p in prompts)),
                "needles": len(prompts),
                "accuracy": sum(hits) / len(hits),
                "kv_bytes": round(statistics.mean(sizes)),
                "prefill_ms": statistics.median(times),
                "decode_ms_per_token": None,
                "consistent": None,
                "by_depth": {depth: sum(h) / len(h) for depth, h in by_depth.items()},
                "answers": answers,
            }
        )
    versions = {
        "kvpress": version("kvpress"),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    Path(reply_path).write_text(json.dumps({"rows": rows, "versions": versions}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
