"""Benchmarks (not tests): `lotus3d bench STAGE` prints ours vs a baseline, measured side by side."""
