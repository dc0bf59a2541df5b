"""Ranking by a robustness goal on a hand-made study with a known answer for each goal."""

from __future__ import annotations

import pytest

from cryotune import vocab
from cryotune.errors import BadInput
from cryotune.study.select import pareto
from cryotune.study.store import StudyStore
from cryotune.study.tables import load_study

CELLS = [(k, e) for e in (0.1, 0.2) for k in "ABC"]
# configuration -> (config, clean score, the six contaminated cells' scores in CELLS order)
CONFIGS = {
    "P": ({"method": "l2_ae", "p": 2}, 1.0, [4.0, 1.2, 1.1, 1.3, 1.2, 1.1]),
    "Q": ({"method": "l1_ae", "p": 1}, 1.5, [1.8, 1.9, 1.6, 1.7, 1.6, 1.5]),
    "R": ({"method": "beta_gan", "alpha": 0.5, "beta": 0.5, "lambda": 10.0, "p": 1,
           "reduction": "sum"}, 1.2,
          [2.0, 2.1, 2.2, 2.0, 2.1, 2.0]),
    "S": ({"method": "beta_gan", "alpha": 0.5, "beta": 0.5, "lambda": 5.0, "p": 1,
           "reduction": "sum"}, 3.0,
          [3.1] * 6),
    # the best on every contaminated goal, but seed 1 diverged in type B at eps 0.1
    "T": ({"method": "wgan_gp", "lambda": 10.0, "p": 1, "reduction": "sum"}, 0.9, [1.0] * 6),
}
LABELS = {"P": "ℓ2-AE", "Q": "ℓ1-AE", "R": "(0.5,0.5)-GAN + ℓ1", "S": "(0.5,0.5)-GAN + ℓ1 (λ=5)",
          "T": "WGAN-GP + ℓ1"}


def make(tmp_path, test=lambda score: 10 * score + 0.5):
    store = StudyStore(tmp_path, "sel")
    i = 0
    for name, (config, clean, cont) in CONFIGS.items():
        for (kind, eps), score in [(("none", 0.0), clean), *zip(CELLS, cont, strict=True)]:
            for seed, delta in ((0, -0.01), (1, 0.01)):  # the seed mean is the score
                diverged = name == "T" and (kind, eps, seed) == ("B", 0.1, 1)
                store.record_trial({
                    "trial_id": f"t{i:03d}", "status": "diverged" if diverged else "finished",
                    "config": {**config, "eps": eps, "contamination": kind, "seed": seed,
                               "dataset": "d0", "snr": 0.1},
                    "select_score": score + delta, "test_mse_at_best": test(score + delta),
                    "metrics": {"test_mse": 99.0}})
                i += 1
    store.record_trial({"trial_id": "err", "status": "error", "error": "boom",
                        "config": {"method": "l1_ae", "eps": 0.0, "seed": 5, "dataset": "d0"}})
    store.record_trial({"trial_id": "nlm", "status": "finished", "metrics": {"test_mse": 1.0},
                        "config": {"method": "nlm", "eps": 0.0, "dataset": "d0"}})
    return load_study(tmp_path / "sel")


def _order(selection):
    names = {v: k for k, v in LABELS.items()}
    return [names[label] for label in selection.table["label"]]


@pytest.mark.parametrize("goal, order, score", [
    ("clean", "TPRQS", 0.9),       # T's divergence is in a contaminated cell: clean reads none
    ("worst", "QRSPT", 1.9),
    ("worst_ratio", "SQRPT", 3.1 / 3.0),
    ("cvar", "QRPST", (1.9 + 1.8) / 2),  # ceil(0.25 * 6) = 2 worst cells
])
def test_each_goal_has_its_known_answer(tmp_path, goal, order, score):
    pick = make(tmp_path).select(goal=goal)
    assert "".join(_order(pick)) == order
    assert pick.best["score"] == pytest.approx(score)
    assert list(pick.table["rank"]) == [1, 2, 3, 4, 5]
    t = pick.table.set_index("label")
    assert t.loc[LABELS["T"], "eligible"] == (goal == "clean")
    assert t.loc[LABELS["T"], "diverged"] == (0 if goal == "clean" else 1)
    assert pick.excluded == {"diverged": 1, "error": 1, "no select_score": 1}


def test_the_test_metric_is_reported_never_ranked_on(tmp_path):
    pick = make(tmp_path).select(goal="worst")
    q = pick.table.set_index("label").loc[LABELS["Q"]]
    # Q's worst validation cell is (A, 0.2) at 1.9: the test reported is that cell's
    assert q["test"] == pytest.approx(10 * 1.9 + 0.5)
    assert q["test_clean"] == pytest.approx(10 * 1.5 + 0.5)
    # poisoned test numbers (best on validation is now worst on test) change no rank
    for goal in vocab.ROBUSTNESS_GOALS:
        poisoned = make(tmp_path / "poison", test=lambda s: 1e3 - s).select(goal=goal)
        assert _order(poisoned) == _order(make(tmp_path / goal).select(goal=goal))
    with pytest.raises(BadInput, match="test metric"):
        make(tmp_path / "x").select(goal="clean", score="test_mse_at_best")


def test_cvar_fraction_and_pareto_front(tmp_path):
    study = make(tmp_path)
    pick = study.select(goal="cvar", q=0.5)  # 3 worst cells
    assert pick.table.set_index("label").loc[LABELS["Q"], "score"] == pytest.approx(1.8)
    assert sorted(pick.front["label"]) == sorted(LABELS[n] for n in "PQR")
    assert list(pick.front["label"]) == [LABELS[n] for n in "PRQ"]  # by clean score
    with pytest.raises(BadInput, match="out of range"):
        study.select(goal="cvar", q=0)
    with pytest.raises(BadInput, match="unknown robustness goal"):
        study.select(goal="best")


def test_pareto_by_hand():
    assert list(pareto([1, 2, 3, 2], [3, 2, 1, 2.5])) == [True, True, True, False]
    assert list(pareto([1, 1], [2, 2])) == [True, True]  # equal points do not beat each other


def test_study_without_contamination_ranks_clean_only(tmp_path):
    store = StudyStore(tmp_path, "clean")
    for m, s in (("l1_ae", 2.0), ("l2_ae", 1.0)):
        store.record_trial({"trial_id": m, "status": "finished", "select_score": s,
                            "config": {"method": m, "eps": 0.0, "seed": 0}})
    study = load_study(tmp_path / "clean")
    assert study.select(goal="clean").best["label"] == "ℓ2-AE"
    with pytest.raises(BadInput, match="no contaminated trials"):
        study.select(goal="worst")


def test_goals_that_need_eps_0_say_so(tmp_path):
    store = StudyStore(tmp_path, "dirty")
    for m, v in (("l1_ae", 2.0), ("l2_ae", 1.0)):
        store.record_trial({"trial_id": m, "status": "finished", "select_score": v,
                            "config": {"method": m, "eps": 0.3, "contamination": "A",
                                       "seed": 0}})
    study = load_study(tmp_path / "dirty")
    assert study.select(goal="worst").best["label"] == "ℓ2-AE"
    for goal in ("clean", "worst_ratio"):
        with pytest.raises(BadInput, match="no eps 0 trials"):
            study.select(goal=goal)
