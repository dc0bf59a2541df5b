"""Fixtures of the sweep tests: one tiny simulated store, and a spec builder around it."""

import pytest

from cryotune.sweep.spec import spec_from_mapping


@pytest.fixture(scope="session")
def toy_store(tmp_path_factory):
    """16 px pairs, 96 train / 16 test, in shards of 48 rows (so epochs cross shards)."""
    from cryotune.data.simulate import simulate

    return simulate(tmp_path_factory.mktemp("data") / "toy", size=16, n_train=96, n_test=16,
                    snr=0.5, seed=0, shard_rows=48)


@pytest.fixture
def make_spec(tmp_path, toy_store):
    """A spec on the toy store with narrow models, stored under tmp_path; keys override."""

    def make(**changes):
        raw = {
            "name": "t",
            "dataset": str(toy_store),
            "methods": ["l1_ae"],
            "epochs": 2,
            "train": {"width": 4, "depth": 1, "batch_size": 16, "gallery": 4},
            "storage": str(tmp_path / "studies"),
        }
        raw.update(changes)
        return spec_from_mapping(raw)

    return make
