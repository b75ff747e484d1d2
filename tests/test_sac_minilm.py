"""The MiniLM member on real text (the ``retrieval`` extra's embedding model): slow, but under a minute."""

from __future__ import annotations

import numpy as np
import pytest

from selfevolve.refine.committee import SentenceEmbedder


@pytest.mark.slow
def test_minilm_features_are_unit_embeddings_cached_on_disk(tmp_path):
    cache = tmp_path / "minilm.npz"
    embedder = SentenceEmbedder(cache_file=cache)
    features = embedder(
        ["\n\nHuman: how do I bake bread?\n\nAssistant:"] * 2, [" Knead and bake.", " I won't."]
    )
    assert features.shape == (2, 768)  # [e(reply), e(request) * e(reply)], 384 each
    assert np.allclose(np.linalg.norm(features[:, :384], axis=1), 1.0, atol=1e-5)
    # the request's embedding is similar to the cooking reply's, less to the refusal's
    assert features[0, 384:].sum() > features[1, 384:].sum()
    again = SentenceEmbedder(cache_file=cache, model_path="/nonexistent")  # served from the cache: no model
    assert np.allclose(
        again(["\n\nHuman: how do I bake bread?\n\nAssistant:"], [" Knead and bake."]), features[:1]
    )
