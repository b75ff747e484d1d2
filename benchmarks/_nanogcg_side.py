"""nanoGCG's step time on the ACR benchmark's model, target and settings, in its own virtualenv.

nanoGCG 0.3.0 pins transformers <= 4.47.1, so ``benchmarks/acr.py`` runs this file with
``.nanogcg-venv/bin/python`` and a copy of the model folder that transformers 4.47 reads (see ``compat_folder``
there). The time of a step is measured between successive calls of nanoGCG's ``compute_token_gradient`` (the
first thing each step does), so its one-off set-up (non-ASCII token scan, prefix cache, buffer) is left out.

    .nanogcg-venv/bin/python benchmarks/_nanogcg_side.py REQUEST.json REPLY.json
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

import nanogcg
import torch
import transformers
from nanogcg.gcg import GCG
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(request_path: str, reply_path: str) -> None:
    request = json.loads(Path(request_path).read_text())
    torch.set_num_threads(request["threads"])
    tokenizer = AutoTokenizer.from_pretrained(request["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(request["model_dir"], torch_dtype=torch.float32).eval()
    stamps: list[float] = []
    widths: list[int] = []
    gradient, keep_ids = GCG.compute_token_gradient, nanogcg.gcg.filter_ids

    def timed_gradient(self, optim_ids):
        stamps.append(time.perf_counter())
        return gradient(self, optim_ids)

    def counted_filter(ids, tokenizer):
        kept = keep_ids(ids, tokenizer)
        widths.append(len(kept))
        return kept

    GCG.compute_token_gradient = timed_gradient
    nanogcg.gcg.filter_ids = counted_filter
    config = nanogcg.GCGConfig(
        num_steps=request["steps"],
        optim_str_init=" ".join(["x"] * request["n_tokens"]),
        search_width=request["batch"],
        topk=request["topk"],
        verbosity="WARNING",
    )
    result = nanogcg.run(model, tokenizer, "", request["target"], config)  # the user turn is the prompt alone
    stamps.append(time.perf_counter())
    with torch.no_grad():  # the same weights as ours? (the bench compares these argmaxes with its own)
        check = model(input_ids=torch.tensor([request["check_ids"]])).logits[0].argmax(-1).tolist()
    reply = {
        "check_argmax": check,
        "step_seconds": [b - a for a, b in itertools.pairwise(stamps)],
        "candidates_per_step": sum(widths) / max(len(widths), 1),
        "best_loss": result.best_loss,
        "prompt_tokens": len(tokenizer(result.best_string, add_special_tokens=False)["input_ids"]),
        "versions": {
            "nanogcg": version("nanogcg"),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
    }
    Path(reply_path).write_text(json.dumps(reply))


if __name__ == "__main__":
    main(*sys.argv[1:3])
