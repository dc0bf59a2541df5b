"""Workflows that combine the layers: a sweep (:mod:`~cryotune.runs.sweep`), the classical
baselines (:mod:`~cryotune.runs.baselines`), validation of a finished study
(:mod:`~cryotune.runs.validate`) and one training run (:mod:`~cryotune.runs.train`). They start
Ray, load studies, train and write rows; nothing below imports them."""
