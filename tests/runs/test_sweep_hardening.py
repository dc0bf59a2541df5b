"""Writers of a study without Ray: the same inline data prepared twice at once, and the
study lock held by baselines and validation."""

from __future__ import annotations

import threading

import pytest

from cryotune._lock import StudyLock
from cryotune.errors import StudyLocked
from cryotune.runs.baselines import run_baselines
from cryotune.runs.sweep import prepare_datasets
from cryotune.runs.validate import validate_study
from cryotune.sweep.spec import spec_from_mapping


def test_two_sweeps_simulating_the_same_data_share_it(tmp_path):
    # two preparations of the same inline data at once (studies at a URI share one simulation
    # cache; here two of one local study): one simulates, the other waits and reuses it
    sim = {"size": 16, "n_train": 64, "n_test": 8, "snr": 0.5, "seed": 3}
    specs = [spec_from_mapping({"name": "a", "dataset": {"simulate": sim}, "methods": ["l1_ae"],
                                "storage": str(tmp_path / "store")}) for _ in "ab"]
    out, errors = {}, []

    def prepare(i, spec):
        try:
            out[i] = prepare_datasets(spec)
        except Exception as err:  # the test reports it
            errors.append(err)

    threads = [threading.Thread(target=prepare, args=(i, s)) for i, s in enumerate(specs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    a, b = out[0][0], out[1][0]
    assert a.path == b.path and a.manifest == b.manifest and a.key == b.key


def test_baselines_and_validation_take_the_study_lock(tmp_path, toy_store):
    study = tmp_path / "studies" / "s"
    with StudyLock(study, command="cryotune sweep s.yaml"):
        with pytest.raises(StudyLocked, match="cryotune sweep s.yaml"):
            run_baselines(toy_store, study, methods=["nlm"])
        with pytest.raises(StudyLocked, match="cryotune sweep s.yaml"):
            validate_study(str(study))
    assert not (study / "trials.parquet").exists()
