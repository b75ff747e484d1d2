"""One fine-tuning run for ``selfevolve bench distributed``, started as a plain process or by ``accelerate launch``.

    python benchmarks/_distributed_side.py OUT.json [--model M] [--documents N] ...
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 benchmarks/_distributed_side.py OUT.json

Fine-tunes the model on fictional documents through the library's ``finetune`` (the accelerate training loop
every update method shares) and, on the main process, writes the loss of every optimizer step, the wall time
and the trained model's logits on a fixed probe.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from accelerate import PartialState

from selfevolve.acquire.knowledge import fictional_knowledge
from selfevolve.runtime import load_model
from selfevolve.update.sft import SFTConfig, finetune
from selfevolve.update.training import TrainingConfig

PROBE = "The capital of France is"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--documents", type=int, default=4)
    parser.add_argument("--chunk-words", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lora", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, seed=0)
    train = TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, lora=args.lora, seed=0)
    config = SFTConfig(train=train, target="document", chunk_words=args.chunk_words)
    documents = fictional_knowledge(args.documents, seed=0).documents
    began = time.perf_counter()
    result = finetune(model, config, documents=documents)
    seconds = time.perf_counter() - began
    ids = torch.tensor([model.tokenizer(PROBE)["input_ids"]], device=model.device)
    with torch.inference_mode():
        logits = model.model(input_ids=ids).logits[0, -1].float()  # (V,)
    state = PartialState()  # after training: the training loop's Accelerator set up the process group
    if state.is_main_process:
        payload = {
            "processes": state.num_processes,
            "losses": result.losses,
            "seconds": seconds,
            "probe_logits": logits.tolist(),
        }
        Path(args.out).write_text(json.dumps(payload))


if __name__ == "__main__":
    main()
