"""Memorization audit on the embedded model: per target set the share memorized, the mean ACR of the memorized
targets and, apart from it, the mean bound of those no prompt was found for; and GCG step time against nanoGCG's.

Part 1 runs MiniPrompt (``selfevolve.evaluate.memorization``, the library's GCG defaults unless flags change them,
the search capped at ``--max-prompt-tokens`` 15 on a CPU instead of the paper's 30, or one token above the
target's length for longer targets, so that a failure's ACR bound stays below 1) over the built-in sets: famous
quotations and licence lines (likely memorized), random token strings and fresh fictional sentences (not). Targets
go round-robin over the sets, and no new one starts after ``--minutes``; finished targets are appended to
``results/acr-targets.jsonl``, so a rerun resumes where the last one stopped (``--fresh`` starts over); a target
is reused only when it was searched with the same settings. Every target row of ``results/acr.json`` holds the
settings it was searched with and its seconds.

``--worst-case`` also times the dearest full search at the library's defaults (a 20-token random string, every
length failing up to the 30-token cap) and stores it as ``worst_case``.

Part 2 times GCG steps of ours and of nanoGCG 0.3.0 (in ``.nanogcg-venv``, created on first use: it pins
transformers <= 4.47.1, and reads the model through a converted copy of its folder, see ``compat_folder``) on the
same model, target and settings (prompt length, top-k, candidates per step, chat template, ASCII-only tokens,
retokenization filter), interleaved in this one run; rows report medians. One torch thread by default (steady
timings on a shared machine).

    selfevolve bench acr [--quotations 3] [--licences 3] [--random 2] [--fictional 2] [--minutes 35] [--worst-case]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks._common import print_table, write_results
from selfevolve.acquire.knowledge import fictional_knowledge
from selfevolve.config import config_to_dict
from selfevolve.evaluate.acr_targets import builtin_targets, random_token_strings
from selfevolve.evaluate.gcg import GCGConfig, gcg
from selfevolve.evaluate.memorization import (
    MiniPromptConfig,
    acr_audit,
    as_rows,
    histogram,
    minprompt_search,
    summarize,
)
from selfevolve.runtime import DEFAULT_MODEL, cache_dir, load_model

ROOT = Path(__file__).resolve().parent.parent
NANOGCG_VENV = ROOT / ".nanogcg-venv"
NANOGCG_PINS = ["torch==2.13.0", "nanogcg==0.3.0"]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfevolve bench acr", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--quotations", type=int, default=3, help="famous quotations audited")
    parser.add_argument("--licences", type=int, default=3, help="licence lines audited")
    parser.add_argument("--random", type=int, default=2, help="random token strings audited")
    parser.add_argument("--fictional", type=int, default=2, help="fictional sentences audited")
    parser.add_argument("--steps", type=int, help="GCG steps at the first length (default: the library's)")
    parser.add_argument("--batch", type=int, help="candidates per step (default: the library's)")
    parser.add_argument("--topk", type=int, help="top-k tokens per position (default: the library's)")
    parser.add_argument("--template", choices=["none", "chat"], default="none")
    parser.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=15,
        help="search cap (CPU; library: 30), raised to target tokens + 1 for longer targets",
    )
    parser.add_argument(
        "--minutes", type=float, default=35, help="start no new target after this long (rerun to resume)"
    )
    parser.add_argument("--fresh", action="store_true", help="ignore targets finished by an earlier run")
    parser.add_argument("--nanogcg", choices=["auto", "skip"], default="auto")
    parser.add_argument("--compare-steps", type=int, default=5, help="GCG steps per timed run")
    parser.add_argument(
        "--compare-rounds", type=int, default=2, help="interleaved rounds of ours and nanoGCG"
    )
    parser.add_argument("--compare-tokens", type=int, default=20, help="prompt length of the timed runs")
    parser.add_argument(
        "--worst-case",
        action="store_true",
        help="also time the full search at the library's defaults for a 20-token string nothing memorizes",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results")
    parser.add_argument(
        "--docs-img",
        default=str(ROOT / "docs" / "img" / "acr_histogram.png"),
        help="histogram copy ('' to skip)",
    )
    return parser


def nanogcg_python() -> Path:
    """The interpreter of the nanoGCG virtualenv, created on first use."""
    python = NANOGCG_VENV / "bin" / "python"
    if not python.exists():
        shutil.rmtree(NANOGCG_VENV, ignore_errors=True)
        subprocess.run([shutil.which("python3.11") or "python3", "-m", "venv", str(NANOGCG_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *NANOGCG_PINS], check=True)
    return python


def compat_folder(model_dir: Path, folder: Path) -> list[str]:
    """A copy of a transformers-5 model folder that transformers 4.47 loads; returns what had to change."""
    config = json.loads((model_dir / "config.json").read_text())
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    changes = []
    if "rope_parameters" in config and "rope_theta" not in config:
        config["rope_theta"] = config["rope_parameters"]["rope_theta"]
        changes.append("config: rope_parameters.rope_theta copied to rope_theta (4.47 would use 10000)")
    if tokenizer_config.get("tokenizer_class") == "TokenizersBackend":
        tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
        changes.append("tokenizer_class TokenizersBackend (new in transformers 5) -> PreTrainedTokenizerFast")
    template = model_dir / "chat_template.jinja"
    if template.is_file() and "chat_template" not in tokenizer_config:
        tokenizer_config["chat_template"] = template.read_text()
        changes.append("chat_template.jinja inlined into tokenizer_config.json")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    for name in ("model.safetensors", "tokenizer.json", "generation_config.json"):
        if (model_dir / name).exists():
            (folder / name).symlink_to(model_dir / name)
    return changes


def run_nanogcg(python: Path, folder: Path, request: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        request_path, reply_path = Path(tmp) / "request.json", Path(tmp) / "reply.json"
        request_path.write_text(json.dumps({**request, "model_dir": str(folder)}))
        side = Path(__file__).with_name("_nanogcg_side.py")
        done = subprocess.run(
            [str(python), str(side), str(request_path), str(reply_path)], capture_output=True, text=True
        )
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["no output"]
            raise RuntimeError(f"nanoGCG failed: {lines[-1]}")
        return json.loads(reply_path.read_text())


def compare_steps(args, model, settings: GCGConfig) -> tuple[list[dict], dict]:
    """Median step time of ours and nanoGCG's at equal settings, interleaved; rows and nanoGCG's status."""
    target = random_token_strings(model.tokenizer, 1, tokens=10, seed=args.seed + 1)[0].text
    check_ids = model.encode([{"role": "user", "content": "The capital of France is"}])
    with torch.no_grad():
        check = model.model(input_ids=torch.tensor([check_ids])).logits[0].argmax(-1).tolist()
    request = {
        "target": target,
        "n_tokens": args.compare_tokens,
        "steps": args.compare_steps,
        "topk": settings.topk,
        "batch": settings.batch,
        "threads": args.threads,
    }
    ours_config = replace(
        settings, steps=args.compare_steps, template="chat", ascii_only=True, retokenize=True
    )
    status: dict = {"status": "skipped", "reason": "--nanogcg skip"}
    python = folder = None
    if args.nanogcg == "auto":
        model_dir = cache_dir() / "models" / args.model
        try:
            python = nanogcg_python()
        except (OSError, subprocess.CalledProcessError) as err:
            status = {"status": "not run", "reason": f"cannot create {NANOGCG_VENV}: {err}"}
        if python is not None and not (model_dir / "config.json").is_file():
            status = {"status": "not run", "reason": f"no local safetensors copy of the model at {model_dir}"}
            python = None
        if python is not None:
            folder = Path(tempfile.mkdtemp(prefix="acr-nanogcg-"))
            status = {"status": "ok", "adaptations": compat_folder(model_dir, folder / "model")}
    gcg(model, target, args.compare_tokens, replace(ours_config, steps=1))  # warm-up (allowed-token table)
    ours, theirs, widths = [], [], []
    for _ in range(args.compare_rounds):
        result = gcg(model, target, args.compare_tokens, ours_config)
        ours.append(result.seconds / result.steps)
        if python is not None:
            try:
                reply = run_nanogcg(python, folder / "model", {**request, "check_ids": check_ids})
            except (RuntimeError, OSError, json.JSONDecodeError) as err:
                status, python = {**status, "status": "failed", "reason": str(err)}, None
                continue
            theirs.extend(reply["step_seconds"])
            status["same_outputs_as_ours"] = reply["check_argmax"] == check
            widths.append(reply["candidates_per_step"])
            status["versions"] = reply["versions"]
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
    rows = [{"impl": "ours", "step_s": statistics.median(ours), **request}]
    if theirs:
        rows.append({"impl": "nanogcg", "step_s": statistics.median(theirs), **request})
        status["candidates_per_step"] = statistics.mean(widths)
        status["ours_over_nanogcg"] = rows[0]["step_s"] / rows[1]["step_s"]
    return rows, status


def worst_case(model) -> dict:
    """The dearest full MiniPrompt search at the library's defaults: a 20-token random string that nothing
    memorizes, so every length fails up to the 30-token cap (the issue's 20-minute budget on 2 cores)."""
    (target,) = random_token_strings(model.tokenizer, 1, tokens=20, seed=9)
    result = minprompt_search(model, target, MiniPromptConfig())
    row = {
        "target": target.text,
        "target_tokens": result.target_tokens,
        "success": result.success,
        "acr": result.acr,
        "steps": result.steps,
        "minutes": result.seconds / 60,
        "threads": torch.get_num_threads(),
        "seconds_per_length": {a.n_tokens: round(a.seconds, 1) for a in result.attempts},
    }
    print_table("worst-case MiniPrompt search (library defaults)", [row], [k for k in row if k != "target"])
    return row


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    base = MiniPromptConfig()
    overrides = {k: v for k, v in (("steps", args.steps), ("batch", args.batch), ("topk", args.topk)) if v}
    config = replace(
        base,
        gcg=replace(base.gcg, template=args.template, seed=args.seed, **overrides),
        max_prompt_tokens=args.max_prompt_tokens,
    )
    sizes = {"quotations": args.quotations, "licences": args.licences, "random": args.random}
    fictional = fictional_knowledge(args.fictional, seed=args.seed).documents if args.fictional else ()
    grouped = builtin_targets(model.tokenizer, sizes, seed=args.seed, documents=fictional)
    by_set = [[t for t in grouped if t.set == name] for name in dict.fromkeys(t.set for t in grouped)]
    targets = [group[i] for i in range(max(map(len, by_set))) for group in by_set if i < len(group)]
    out = Path(args.out)
    partial = out / "acr-targets.jsonl"
    if args.fresh:
        partial.unlink(missing_ok=True)
    records, began = [], time.perf_counter()
    for target in targets:  # one at a time, round-robin over the sets, so a time-limited run covers each set
        if time.perf_counter() - began > 60 * args.minutes:
            print(f"time budget of {args.minutes:g} min spent; {len(targets) - len(records)} target(s) left")
            break
        tokens = len(model.tokenizer(target.text, add_special_tokens=False)["input_ids"])
        capped = replace(config, max_prompt_tokens=max(config.max_prompt_tokens, tokens + 1))
        records += acr_audit(model, [target], capped, resume_file=partial)
    rows = as_rows(records, model)
    summary = summarize(rows)
    print_table(f"ACR audit, {model.revision}", summary)
    print_table(
        "targets",
        [{**r, "acr": float(r["acr"]), "prompt": repr(r["prompt"])} for r in rows],
        ["id", "target_tokens", "prompt_tokens", "acr", "memorized", "steps", "seconds", "prompt"],
    )
    paths = [out / "acr_histogram.png"] + ([Path(args.docs_img)] if args.docs_img else [])
    for path in paths:
        histogram(rows, path, title=f"ACR, {args.model}")
    worst = worst_case(model) if args.worst_case else None
    timing, nanogcg = compare_steps(args, model, config.gcg)
    print_table(
        "GCG step time at equal settings (median seconds)", timing, ["impl", "step_s", "n_tokens", "batch"]
    )
    if "ours_over_nanogcg" in nanogcg:
        print(f"ours / nanoGCG step time: {nanogcg['ours_over_nanogcg']:.2f}")
    else:
        print(f"nanoGCG {nanogcg['status']}: {nanogcg.get('reason', '')}")
    path = write_results(
        "acr",
        rows,
        out_dir=out,
        model=model.revision,
        config=config_to_dict(config),
        summary=summary,
        timing=timing,
        nanogcg=nanogcg,
        worst_case=worst,
    )
    print(f"wrote {path}")
