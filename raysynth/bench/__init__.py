"""Benchmarks run by `raysynth bench NAME`; each module has a `run(out=None, ...) -> dict`."""
