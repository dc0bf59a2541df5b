"""Sweeps on Ray Tune: the spec and its axes, the search space, trial resources, the
trainable and the recorder. The workflow that runs one is :mod:`cryotune.runs.sweep`."""
