"""The l_p term's reduction in sweep specs: per method entry (fixed or an axis), in train:,
on trial rows (None for the autoencoders), and the lambda-convention study's grid."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from cryotune.errors import BadConfig
from cryotune.sweep.space import train_config, trial_configs
from cryotune.sweep.spec import load_spec, spec_from_mapping

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
DATA = {"simulate": {"size": 16, "n_train": 20, "n_test": 4, "snr": 0.1}}


def _spec(**extra):
    return spec_from_mapping({"name": "t", "dataset": DATA, **extra})


def test_reduction_is_an_axis_of_a_method_entry_and_ignored_by_the_autoencoders():
    spec = _spec(methods=[{"method": "l1_ae"},
                          {"method": "beta_gan", "reduction": ["sum", "mean"]}],
                 train={"reduction": "mean"})
    configs = trial_configs(spec)
    assert [(c["method"], c["reduction"]) for c in configs] == [
        ("l1_ae", None), ("beta_gan", "sum"), ("beta_gan", "mean")]
    assert train_config(configs[2]).reduction == "mean"


def test_train_reduction_is_the_default_of_every_gan_entry():
    spec = _spec(methods=[{"method": "wgan_gp"}, {"method": "js_gan", "reduction": "sum"}],
                 train={"reduction": "mean"})
    assert [c["reduction"] for c in trial_configs(spec)] == ["mean", "sum"]
    assert [c["reduction"] for c in trial_configs(_spec(methods=["wgan"]))] == ["sum"]


def test_top_level_reduction_is_an_axis_like_lambda():
    spec = _spec(methods=["l1_ae", "wgan", {"method": "beta_gan", "reduction": "mean"}],
                 reduction=["sum", "mean"], **{"lambda": [1, 10]})
    configs = trial_configs(spec)
    got = Counter((c["method"], c["reduction"], c["lambda"]) for c in configs)
    # the autoencoder runs once; wgan crosses both axes; beta_gan keeps its own reduction
    assert got == {("l1_ae", None, None): 1,
                   ("wgan", "sum", 1.0): 1, ("wgan", "mean", 1.0): 1,
                   ("wgan", "sum", 10.0): 1, ("wgan", "mean", 10.0): 1,
                   ("beta_gan", "mean", 1.0): 1, ("beta_gan", "mean", 10.0): 1}
    random = _spec(methods=["wgan"], reduction=["sum", "mean"], search="random", n_trials=40)
    assert {c["reduction"] for c in trial_configs(random)} == {"sum", "mean"}
    with pytest.raises(BadConfig) as err:
        _spec(methods=["wgan"], reduction=["sum", "median"])
    assert err.value.where == "reduction[1]"


@pytest.mark.parametrize("where,extra", [
    ("methods[0].reduction", {"methods": [{"method": "beta_gan", "reduction": "median"}]}),
    ("train.reduction", {"methods": ["wgan"], "train": {"reduction": "pixels"}}),
])
def test_unknown_reductions_are_refused_with_their_key_path(where, extra):
    with pytest.raises(BadConfig) as err:
        _spec(**extra)
    assert err.value.where.startswith(where) and "sum" in str(err.value)


@pytest.mark.parametrize("scale", [None, "cpu"])
def test_lambda_convention_grid(scale):
    spec = load_spec(SPACES / "lambda-convention.yaml", scale=scale)
    configs = trial_configs(spec)
    arms = Counter((c["method"], c["reduction"], c["lambda"], c["lr_g"]) for c in configs)
    # 4 arms x (eps 0, eps 0.3 with A and B) x 3 paired seeds
    assert arms == {("l1_ae", None, None, 1e-2): 9, ("beta_gan", "mean", 10.0, 1e-2): 9,
                    ("beta_gan", "sum", 10.0, 1e-2): 9, ("beta_gan", "mean", 10.0, 1e-3): 9}
    cells = Counter((c["eps"], c["contamination"], c["seed"]) for c in configs)
    assert len(cells) == 9 and set(cells.values()) == {4}
    assert {(c["alpha"], c["beta"], c["p"]) for c in configs if c["method"] == "beta_gan"} == \
        {(0.5, 0.5, 1)}
    size = 32 if scale == "cpu" else 128
    assert {c["dataset"].startswith(f"sim{size}-") for c in configs} == {True}


def test_the_papers_spaces_use_the_papers_sum():
    for name in ("paper-fig5-robustness", "paper-table1", "paper-table2-alpha-beta",
                 "paper-table4-lambda", "optuna-hpo", "demo", "smoke"):
        spec = load_spec(SPACES / f"{name}.yaml", scale="cpu")
        assert spec.train["reduction"] == "sum", name
        assert spec.raw["train"]["reduction"] == "sum", name  # the report's spec block
