"""Benchmarks, run with ``selfevolve bench NAME``; each module exposes ``main(argv)``."""
