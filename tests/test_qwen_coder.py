"""The optional Qwen2.5-Coder-0.5B, assembled from six wheels and hash-checked (slow: CI still runs it)."""

from __future__ import annotations

import pytest

from selfevolve.runtime import load_model

pytestmark = pytest.mark.slow


def test_qwen_coder_assembles_verifies_and_writes_code():
    model = load_model("qwen2.5-coder-0.5b-instruct")
    assert model.model.config.model_type == "qwen2"
    assert model.revision == "qwen2.5-coder-0.5b-instruct@1d9614638d18"
    request = [{"role": "user", "content": "Complete this Python function:\ndef add(a, b):"}]
    (answer,) = model.generate([request], max_new_tokens=40)
    assert "return a + b" in answer.text.replace("(a + b)", "a + b")
