"""Sweeps on Ray Tune: search spaces and the Tuner wiring."""
