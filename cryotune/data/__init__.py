"""Datasets: simulation, ingest of MRC/STAR stacks, the sharded store, contamination and the Ray Data pipeline."""
