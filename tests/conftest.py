"""Shared fixtures: tiny random models for unit tests, the embedded SmolLM2 for ``slow`` integration tests."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_llama():
    from selfevolve.runtime import load_model

    return load_model("tiny-random-llama", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2():
    from selfevolve.runtime import load_model

    return load_model("tiny-random-qwen2", seed=0)


@pytest.fixture(scope="session", params=["tiny-random-llama", "tiny-random-qwen2"])
def tiny_model(request):
    from selfevolve.runtime import load_model

    return load_model(request.param, seed=0)


@pytest.fixture(scope="session")
def smollm2():
    from selfevolve.runtime import load_model

    return load_model("smollm2-135m-instruct")
