"""SweepSpec: the shipped search spaces, overrides and scale presets, and bad spaces."""

import subprocess
import sys
from pathlib import Path

import pytest

from cryotune.errors import BadConfig
from cryotune.sweep.space import trial_configs
from cryotune.sweep.spec import Range, Select, apply_overrides, load_spec, spec_from_mapping

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"

# trial counts worked out by hand from each file's axes (see their header comments)
SHIPPED = {
    "smoke": (6, 6),  # 3 methods x (eps 0, eps 0.2 A) x 1 seed
    "demo": (12, 12),  # 3 methods x (eps 0 + eps 0.2 x A, B, C) x 1 seed
    "paper-table1": (36, 36),  # 2 SNR x 6 methods x 3 seeds
    "paper-table2-alpha-beta": (48, 48),  # 2 SNR x 8 pairs x 3 seeds
    "paper-table4-lambda": (27, 27),  # 8 lambdas x 3 seeds + l1_ae x 3 seeds
    "paper-fig5-robustness": (180, 180),  # 6 methods x (1 + 3 eps x 3 types) x 3 seeds
    "optuna-hpo": (40, 12),  # n_trials
    "lambda-convention": (36, 36),  # 4 arms x (eps 0 + eps 0.3 x A, B) x 3 seeds
    "own-data": (2, 2),  # 2 methods x eps 0 x 1 seed
}


def _base(**changes):
    raw = {
        "name": "t",
        "dataset": "data/some-store",
        "methods": [{"method": "l1_ae"}],
        "epochs": 2,
    }
    raw.update(changes)
    return raw


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_spaces_load_at_both_scales(name):
    for scale, expected in zip((None, "cpu"), SHIPPED[name], strict=True):
        spec = load_spec(SPACES / f"{name}.yaml", scale=scale)
        assert spec.name == name
        count = spec.n_trials if spec.search == "optuna" else len(trial_configs(spec))
        assert count == expected


@pytest.mark.parametrize("name", [n for n in SHIPPED if n.startswith(("paper", "optuna"))])
def test_paper_files_carry_the_paper_scale_and_shrink_for_a_cpu(name):
    paper = load_spec(SPACES / f"{name}.yaml")
    for ds in paper.dataset:
        assert ds.simulate["size"] == 128 and ds.simulate["n_train"] == 25000
        assert ds.simulate["n_test"] == 1500
    assert paper.resources.gpu > 0
    configs = [] if paper.search == "optuna" else trial_configs(paper)
    assert all(c["batch_size"] == 20 and c["lr_d"] == 1e-3 and c["lr_g"] == 1e-2 for c in configs)
    cpu = load_spec(SPACES / f"{name}.yaml", scale="cpu")
    assert all(ds.simulate["size"] == 32 and ds.simulate["n_train"] == 1000 for ds in cpu.dataset)
    assert cpu.resources.gpu == 0 and cpu.train["width"] == 16


def test_table_settings_follow_the_paper():
    t2 = trial_configs(load_spec(SPACES / "paper-table2-alpha-beta.yaml"))
    pairs = {(c["alpha"], c["beta"]) for c in t2}
    assert pairs == {(1, 1), (0.5, 0.5), (-0.5, -0.5), (-1, -1), (1, -1), (0.5, -0.5), (0, 0),
                     (0.1, -0.1)}
    assert {c["snr"] for c in t2} == {0.1, 0.05}
    t4 = trial_configs(load_spec(SPACES / "paper-table4-lambda.yaml"))
    assert sorted({c["lambda"] for c in t4 if c["method"] == "beta_gan"}) == \
        [0.1, 1, 5, 10, 50, 100, 500, 10000]
    assert all(c["lambda"] is None for c in t4 if c["method"] == "l1_ae")
    f5 = trial_configs(load_spec(SPACES / "paper-fig5-robustness.yaml"))
    settings = {(c["eps"], c["contamination"]) for c in f5}
    assert settings == {(0.0, "none")} | {(e, k) for e in (0.1, 0.2, 0.3) for k in "ABC"}


def test_grid_count_is_the_product_of_the_axes():
    raw = _base(
        dataset={"simulate": {"size": 16, "n_train": 10, "n_test": 5, "snr": [0.1, 0.05]}},
        methods=[{"method": "l2_ae"},
                 {"method": "beta_gan", "pairs": [[1, 1], [0.5, 0.5]], "lr_g": [1e-2, 1e-3]}],
        **{"lambda": [1, 10]}, eps=[0, 0.1, 0.2], contamination=["A", "C"], seeds=2,
    )
    configs = trial_configs(spec_from_mapping(raw))
    settings = 1 + 2 * 2  # eps 0 once, 2 eps x 2 types
    per_dataset = (1 + 2 * 2 * 2) * settings * 2  # (l2_ae + pairs x lr_g x lambda) x settings x seeds
    assert len(configs) == 2 * per_dataset
    keys = {tuple(sorted((k, str(v)) for k, v in c.items())) for c in configs}
    assert len(keys) == len(configs)  # every combination once


def test_ignored_values_are_none_and_p_is_the_exponent_used():
    raw = _base(methods=["l2_ae", {"method": "wgan_gp", "p": 1}, {"method": "wgan"}])
    by = {c["method"]: c for c in trial_configs(spec_from_mapping(raw))}
    assert by["l2_ae"]["p"] == 2 and by["l2_ae"]["lambda"] is None and by["l2_ae"]["alpha"] is None
    assert by["wgan_gp"]["mu"] == 10 and by["wgan_gp"]["clip"] is None
    assert by["wgan"]["clip"] == 0.01 and by["wgan"]["mu"] is None and by["wgan"]["lambda"] == 10


def test_overrides_and_scale_presets():
    raw = _base(scales={"tiny": {"train.width": 4, "methods[0].lr_g": 0.5}})
    spec = spec_from_mapping(raw, scale="tiny", overrides=["epochs=3", "eps=[0, 0.1]",
                                                           "contamination=B", "seeds=[4]"])
    assert spec.epochs == 3 and spec.eps == [0.0, 0.1] and spec.contamination == ["B"]
    assert spec.train == {"width": 4} and spec.methods[0].params["lr_g"] == [0.5]
    assert spec.seeds == [4]
    assert spec.raw["train"] == {"width": 4}  # the resolved mapping is kept for spec.yaml
    assert apply_overrides({"a": [{"b": 1}]}, [("a[0].b", 2), ("c.d", 3)]) == \
        {"a": [{"b": 2}], "c": {"d": 3}}
    with pytest.raises(BadConfig, match="known presets: tiny"):
        spec_from_mapping(raw, scale="gpu")
    with pytest.raises(BadConfig, match="key=value"):
        spec_from_mapping(raw, overrides=["epochs"])
    with pytest.raises(BadConfig, match=r"no list item \[5\]"):
        spec_from_mapping(raw, overrides=["methods[5].alpha=1"])


BAD = [
    ({"methods": ["l1_ae", "l2_ae", {"method": "beta_gan", "alpha": 1.5}]},
     "methods[2].alpha", "1.5 is outside [-1, 1]"),
    ({"methods": [{"method": "beta_gan", "alpha": [0.5, -2]}]}, "methods[0].alpha[1]", "outside"),
    ({"methods": [{"method": "beta_gan", "pairs": [[1, 1], [1]]}]}, "methods[0].pairs[1]",
     "expected [alpha, beta]"),
    ({"methods": [{"method": "l1_ae", "alpha": 0.5}]}, "methods[0]", "belong to beta_gan"),
    ({"methods": [{"method": "gan"}]}, "methods[0].method", "not one of"),
    ({"methods": [{"method": "l1_ae", "widht": 8}]}, "methods[0].widht", "unknown key"),
    ({"methods": [{"method": "wgan_gp", "d_norm": "batch"}]}, "methods[0].d_norm", "batch norm"),
    ({"methods": [{"method": "l1_ae", "seed": 1}]}, "methods[0].seed", "seeds"),
    ({"methods": []}, "methods", "no methods"),
    ({"epoch": 3}, "epoch", "unknown key"),
    ({"epochs": "two"}, "epochs", "integer"),
    ({"epochs": 0}, "epochs", "outside"),
    ({"eps": [0, 1.5], "contamination": "A"}, "eps[1]", "outside [0, 1]"),
    ({"eps": [0.1]}, "contamination", "needs contamination"),
    ({"eps": 0.1, "contamination": ["D"]}, "contamination[0]", "not one of A, B, C"),
    ({"lambda": {"loguniform": [0, 10]}, "search": "random", "n_trials": 2}, "lambda.loguniform",
     "low > 0"),
    ({"lambda": {"normal": [1, 10]}, "search": "random", "n_trials": 2}, "lambda", "range"),
    ({"lambda": -1}, "lambda", "outside"),
    ({"methods": [{"method": "l1_ae", "lr_g": {"uniform": [0.1, 0.2]}}]}, "methods[0].lr_g",
     "needs search: random or optuna"),
    ({"search": "optuna"}, "n_trials", "needs the number of trials"),
    ({"n_trials": 4}, "n_trials", "random and optuna"),
    ({"search": "bayes"}, "search", "not one of"),
    ({"scheduler": "hyperband"}, "scheduler.type", "not one of"),
    ({"scheduler": {"type": "asha", "grace_period": 5}}, "scheduler.grace_period", "exceeds"),
    ({"scheduler": {"type": "asha", "reduction_factor": 1}}, "scheduler.reduction_factor",
     "not above 1"),
    ({"resources": {"cpu": 0}}, "resources.cpu", "not positive"),
    ({"resources": {"gpu": 1.5}}, "resources.gpu", "whole number"),
    ({"resources": {"tpu": 1}}, "resources.tpu", "unknown key"),
    ({"max_concurrent": 0}, "max_concurrent", "outside"),
    ({"train": {"seed": 3}}, "train.seed", "seeds"),
    ({"train": {"alpha": 0.1}}, "train.alpha", "methods entry"),
    ({"train": {"batch_size": 0}}, "train.batch_size", "outside"),
    ({"train": {"widht": 8}}, "train.widht", "unknown key"),
    ({"seeds": [0, 0]}, "seeds", "distinct"),
    ({"seeds": 0}, "seeds", "repeats"),
    ({"validate": ["fsc", "psnr"]}, "validate[1]", "not one of"),
    ({"metric": "mse"}, "metric", "not one of"),
    ({"metric": "test_mse"}, "metric", "selects on the test split, which is only reported"),
    ({"select": {"metric": "test_psnr"}}, "select.metric", "the test split is only reported"),
    ({"select": {"metric": "train_mse"}}, "select.metric", "not a validation score"),
    ({"select": {"metric": "val_mse", "mode": "low"}}, "select.mode", "not one of"),
    ({"select": {"metric": "val_mse"}, "metric": "val_psnr"}, "metric", "both metric and select"),
    ({"name": "a b"}, "name", "invalid"),
    ({"dataset": None}, "dataset", "no dataset"),
    ({"dataset": {"path": "a", "simulate": {"snr": 0.1}}}, "dataset", "exactly one"),
    ({"dataset": [{"path": "x/a"}, {"path": "y/a"}]}, "dataset", "two datasets named 'a'"),
    ({"dataset": {"pth": "a"}}, "dataset.pth", "unknown key"),
]


@pytest.mark.parametrize(("change", "where", "what"), BAD, ids=[b[1] for b in BAD])
def test_bad_spaces_name_the_key_path(change, where, what):
    with pytest.raises(BadConfig) as info:
        spec_from_mapping(_base(**change))
    assert info.value.where == where, str(info.value)
    assert what in str(info.value)
    assert info.value.fix


def test_bad_simulate_blocks():
    for sim, where in [({"snr": 0.1, "sise": 16}, "dataset.simulate.sise"),
                       ({"size": 16}, "dataset.simulate.snr"),
                       ({"snr": [0.1, -1]}, "dataset.simulate.snr[1]"),
                       ({"snr": 0.1, "size": 8}, "dataset.simulate.size")]:
        with pytest.raises(BadConfig) as info:
            spec_from_mapping(_base(dataset={"simulate": sim}))
        assert info.value.where == where


def test_ranges_and_defaults():
    spec = spec_from_mapping(_base(
        methods=[{"method": "beta_gan", "alpha": {"uniform": [-1, 1]},
                  "lr_g": {"loguniform": ["1e-4", 0.1]}}],
        search="optuna", n_trials=5, select={"metric": "val_psnr"}))
    assert spec.methods[0].params["alpha"] == Range("uniform", -1.0, 1.0)
    assert spec.methods[0].params["lr_g"] == Range("loguniform", 1e-4, 0.1)
    assert (spec.select.metric, spec.select.mode) == ("val_psnr", "max")  # by the metric
    assert spec_from_mapping(_base()).select == Select("val_mse_median", "min")  # the default
    moved = spec_from_mapping(_base(metric="oracle_val_mse"))  # the former key, on validation
    assert moved.select == Select("oracle_val_mse", "min") and moved.select.oracle
    assert spec.scheduler.type == "fifo" and spec.resources.cpu == 1 and spec.seeds == [0]
    asha = spec_from_mapping(_base(epochs=9, scheduler="asha")).scheduler
    assert (asha.type, asha.grace_period, asha.reduction_factor) == ("asha", 1, 4.0)


def test_validating_a_spec_starts_no_ray(tmp_path):
    code = ("import sys; from cryotune.sweep.spec import load_spec; "
            "from cryotune.sweep.space import trial_configs; "
            f"s = load_spec({str(SPACES / 'paper-fig5-robustness.yaml')!r}, scale='cpu'); "
            "assert len(trial_configs(s)) == 180; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
