"""The union spec, the fixed-setting check and the cell keys of an extension (no Ray)."""

from __future__ import annotations

import pandas as pd
import pytest

from cryotune.errors import BadConfig
from cryotune.study.labels import trial_reductions
from cryotune.sweep.extend import cell_key, new_cells, row_configs, trial_index, union_spec
from cryotune.sweep.space import trial_configs
from cryotune.sweep.spec import spec_from_mapping

BASE = {"name": "s", "dataset": {"simulate": {"size": 16, "n_train": 40, "n_test": 8, "snr": 0.1}},
        "methods": ["l1_ae", {"method": "beta_gan", "pairs": [[0.5, 0.5]]}], "eps": [0, 0.1],
        "contamination": ["A"], "seeds": 1, "epochs": 1, "train": {"width": 4, "depth": 1}}


def _spec(**changes):
    return spec_from_mapping({**BASE, **changes})


def _stored(**changes):
    return {**_spec(**changes).raw, "provenance": {"command": "cryotune sweep s.yaml"}}


def test_axes_join_and_the_grid_grows_by_the_union():
    union, added = union_spec(_stored(), _spec(
        seeds=[1], eps=[0.2], contamination=["B"],
        methods=[{"method": "beta_gan", "pairs": [[1, 1]]}, "l2_ae"]))
    raw = union.raw
    assert raw["seeds"] == [0, 1] and raw["eps"] == [0, 0.1, 0.2]
    assert raw["contamination"] == ["A", "B"]
    assert raw["methods"] == [{"method": "l1_ae"},
                              {"method": "beta_gan", "pairs": [[0.5, 0.5], [1, 1]]},
                              {"method": "l2_ae"}]
    assert raw["provenance"] == {"command": "cryotune sweep s.yaml"}
    assert added["seeds"] == [1] and added["eps"] == [0.2] and added["contamination"] == ["B"]
    old = {cell_key(c) for c in trial_configs(_spec())}
    grid = {cell_key(c) for c in trial_configs(union)}
    assert old < grid
    # 3 methods x 2 pairs for the GAN: 4 models; x (eps 0, 0.1 A/B, 0.2 A/B) x 2 seeds
    assert len(grid) == 4 * 5 * 2
    assert len(new_cells(trial_configs(union), old)) == len(grid) - len(old)


def test_the_same_spec_adds_nothing():
    union, added = union_spec(_stored(), _spec())
    assert added == {}
    assert {cell_key(c) for c in trial_configs(union)} == {
        cell_key(c) for c in trial_configs(_spec())}


@pytest.mark.parametrize(("change", "message"), [
    ({"epochs": 3}, "epochs is 1 in the study and 3 in the spec"),
    ({"train": {"width": 8, "depth": 1}}, "train.width is 4 in the study and 8 in the spec"),
    ({"dataset": {"simulate": {"size": 32, "n_train": 40, "n_test": 8, "snr": 0.1}}},
     "dataset.simulate.size is 16 in the study and 32 in the spec"),
    ({"scheduler": "asha"}, "scheduler.type is \"fifo\" in the study and \"asha\" in the spec"),
])
def test_a_fixed_setting_is_named_with_both_values(change, message):
    with pytest.raises(BadConfig) as err:
        union_spec(_stored(), _spec(**change))
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_searches_other_than_a_grid_are_refused():
    stored = _stored(search="random", n_trials=2)
    with pytest.raises(BadConfig, match="only a grid study can be extended.*random"):
        union_spec(stored, _spec(search="random", n_trials=4))


def _rows(configs, drop=()):
    from cryotune.study.store import flatten_config

    frame = pd.DataFrame([flatten_config(c) for c in configs]).drop(columns=list(drop))
    frame["config.reduction"] = trial_reductions(frame)  # as load_study reads them
    return frame


def test_rows_from_before_reduction_read_as_the_mean_they_ran():
    sums = trial_configs(_spec(reduction=["sum"]))
    means = trial_configs(_spec(reduction=["mean"]))
    old = row_configs(_rows(means, drop=["config.reduction"]))  # no column: an old study
    assert sorted(map(cell_key, old)) == sorted(map(cell_key, means))
    assert {cell_key(c) for c in old} & {cell_key(c) for c in sums} == {
        cell_key(c) for c in sums if c["method"] == "l1_ae"}  # the AE ignores the reduction
    # rows read back from Parquet: NaN for values a method ignores, floats for numbers
    assert sorted(map(cell_key, row_configs(_rows(sums)))) == sorted(map(cell_key, sums))


def test_a_study_without_reduction_extends_under_its_own_convention():
    # the study's GAN rows predate the key: its spec ran the per-pixel mean
    with pytest.raises(BadConfig, match='train.reduction is "mean" in the study and "sum"'):
        union_spec(_stored(), _spec(seeds=2), legacy_reduction=True)
    union, _ = union_spec(_stored(), _spec(seeds=2, train={"width": 4, "depth": 1,
                                                           "reduction": "mean"}),
                          legacy_reduction=True)
    assert {c["reduction"] for c in trial_configs(union) if c["method"] == "beta_gan"} == {"mean"}


def test_trial_index():
    assert trial_index("trial_00012") == 12 and trial_index("baseline-nlm-x") is None


def test_how_a_trial_runs_is_not_part_of_its_cell():
    # rows of a study run before channels_last became the CPU default, with one thread each,
    # are the cells of a grid that leaves both to the machine
    grid = trial_configs(_spec())
    rows = row_configs(_rows(grid))
    rows = [{**r, "channels_last": False, "num_threads": 1, "device": "cpu"} for r in rows]
    assert sorted(map(cell_key, rows)) == sorted(map(cell_key, grid))
    assert new_cells(grid, map(cell_key, rows)) == []
    changed = [{**r, "lr_g": 1e-3} for r in rows]  # what a trial computes still counts
    assert not set(map(cell_key, changed)) & set(map(cell_key, grid))
