"""The single registry: every room that names methods, types or validations reads it."""

import dataclasses

from cryotune import vocab
from cryotune.config import TrainConfig
from cryotune.nn.scoring import BetaScore, make_rule


def test_train_config_accepts_exactly_the_registered_methods():
    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == "method")
    assert tuple(field.metadata["choices"]) == vocab.METHOD_NAMES
    for name, method in vocab.METHODS.items():
        cfg = TrainConfig(method=name, d_norm="layer", p=2)
        assert cfg.adversarial == method.adversarial
        assert cfg.loss_p == (method.p or 2)


def test_rules_follow_the_registry():
    for name, method in vocab.METHODS.items():
        rule = make_rule(name, 0.5, -0.5)
        assert (rule is None) == (method.rule is None)
        if method.rule == "beta":
            assert rule == BetaScore(*(method.pair or (0.5, -0.5)))


def test_labels_and_goals():
    assert vocab.label("l1_ae") == "ℓ1-AE" and vocab.label("cwf") == "CWF (no CTF)"
    assert vocab.label("my_method") == "my_method"
    assert vocab.ADVERSARIAL == ("beta_gan", "js_gan", "wgan", "wgan_gp")
    assert vocab.CONTAMINATIONS == ("none", "A", "B", "C")
    assert vocab.goal("test_psnr") == "max" and vocab.goal("test_mse") == "min"
