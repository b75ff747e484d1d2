"""Refine: clean, repair and filter experience before training on it (one module per method)."""
