"""The l_p term's reduction: ``sum`` (the paper's, sum over pixels and mean over the batch)
against ``mean``, checked with hand-written losses through torch.autograd on a fixed tiny
generator, discriminator and batch."""

from __future__ import annotations

import copy

import pytest
import torch

from cryotune.config import TrainConfig, from_dict
from cryotune.nn.checkpoint import read_checkpoint, write_checkpoint
from cryotune.nn.train import Trainer

torch.set_num_threads(1)
SIZE, BATCH, LAM = 16, 4, 10.0


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(BATCH, 1, SIZE, SIZE, generator=g)
    y = x + 0.3 * torch.randn(BATCH, 1, SIZE, SIZE, generator=g)
    return y, x


def _trainer(reduction: str, method: str = "beta_gan", p: int = 1) -> Trainer:
    cfg = TrainConfig(method=method, alpha=0.5, beta=0.5, p=p, lam=LAM, width=4, depth=1,
                      k_d=1, k_g=1, reduction=reduction, device="cpu", seed=7)
    return Trainer(cfg, (SIZE, SIZE))


def _hand_grads(trainer: Trainer, y, x, weight_adv: float, weight_rec) -> list[torch.Tensor]:
    """Gradients of weight_adv * mean S(D(G(y)), 0) + weight_rec(out - x) on a copy of G."""
    g = copy.deepcopy(trainer.generator)
    d = copy.deepcopy(trainer.discriminator) if trainer.discriminator is not None else None
    out = g(y)
    loss = weight_rec(out - x)
    if d is not None:
        loss = loss + weight_adv * trainer.rule.fake(d(out)).mean()
    return list(torch.autograd.grad(loss, list(g.parameters())))


def _step_grads(trainer: Trainer, y, x) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The gradients _g_step applied (they stay in .grad after the step) and its values."""
    values = trainer._g_step(y, x)
    return [p.grad.clone() for p in trainer.generator.parameters()], values


@pytest.mark.parametrize("p", [1, 2])
def test_sum_is_the_papers_norm_and_hw_times_the_mean_term(p):
    y, x = _batch()
    pixels = SIZE * SIZE
    # the paper's ||x - x^||_p^p: sum over pixels, mean over the batch; and the mean over both
    def norm_sum(d):
        return d.abs().pow(p).flatten(1).sum(1).mean()

    def norm_mean(d):
        return d.abs().pow(p).mean()

    t_sum, t_mean = _trainer("sum", p=p), _trainer("mean", p=p)
    for a, b in zip(t_sum.generator.parameters(), t_mean.generator.parameters(), strict=True):
        assert torch.equal(a, b)  # one seed, one initialisation
    # independent: the adversarial gradient alone and the l_p term under each convention
    adv_only = _hand_grads(t_sum, y, x, 1.0, lambda d: 0.0 * d.sum())
    want_sum = _hand_grads(t_sum, y, x, 1.0, lambda d: LAM * norm_sum(d))
    rec_mean = _hand_grads(t_mean, y, x, 0.0, lambda d: LAM * norm_mean(d))
    got_sum, v_sum = _step_grads(t_sum, y, x)
    got_mean, v_mean = _step_grads(t_mean, y, x)
    for g, w in zip(got_sum, want_sum, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    for gs, gm, a, r in zip(got_sum, got_mean, adv_only, rec_mean, strict=True):
        # sum: G's gradient = adversarial + H*W x (the l_p term's gradient under mean)
        # float32: the difference of two sums carries their rounding, hence the scale-wise atol
        torch.testing.assert_close(gs - a, pixels * r, rtol=1e-4, atol=1e-5 * gs.abs().max())
        torch.testing.assert_close(gm - a, r, rtol=1e-4, atol=1e-5 * gm.abs().max())
    # the loss value: lambda * sum_ij |x - x^|^p / batch + adversarial; g_rec stays per pixel
    fresh = _trainer("sum", p=p)  # the pre-step networks again
    with torch.no_grad():
        out = fresh.generator(y)
        adv = fresh.rule.fake(fresh.discriminator(out)).mean()
        total = (out - x).abs().pow(p).sum() / BATCH
    g_adv, g_rec, _ = v_sum.tolist()
    assert g_adv == pytest.approx(adv.item(), rel=1e-5)
    assert g_rec == pytest.approx(total.item() / pixels, rel=1e-5)
    assert g_adv + LAM * fresh.rec_scale * g_rec == pytest.approx(LAM * total.item() + adv.item(),
                                                                  rel=1e-5)
    assert v_mean[1].item() == pytest.approx(g_rec, rel=1e-5)  # same scale under both


def test_the_autoencoders_keep_the_per_pixel_mean():
    y, x = _batch()
    for method in ("l1_ae", "l2_ae"):
        t_sum, t_mean = _trainer("sum", method), _trainer("mean", method)
        assert t_sum.rec_scale == t_mean.rec_scale == 1.0
        p = t_sum.p
        want = _hand_grads(t_sum, y, x, 0.0, lambda d, p=p: d.abs().pow(p).mean())
        got_sum, _ = _step_grads(t_sum, y, x)
        got_mean, _ = _step_grads(t_mean, y, x)
        for a, b, w in zip(got_sum, got_mean, want, strict=True):
            torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-7)
            assert torch.equal(a, b)


def test_default_is_the_papers_sum_and_bad_values_are_refused():
    assert TrainConfig().reduction == "sum"
    assert from_dict(TrainConfig, {"reduction": "mean"}).reduction == "mean"
    from cryotune.errors import BadConfig

    with pytest.raises(BadConfig, match="reduction"):
        from_dict(TrainConfig, {"reduction": "median"})


def test_checkpoints_without_the_key_resume_with_the_mean(tmp_path):
    trainer = _trainer("mean")
    path = trainer.save_checkpoint(tmp_path / "checkpoint.pt")
    state = read_checkpoint(path)
    assert state["config"]["reduction"] == "mean"
    del state["config"]["reduction"]  # as written before the key existed
    write_checkpoint(state, path)
    loaded = Trainer.load_checkpoint(path)
    assert loaded.config.reduction == "mean" and loaded.rec_scale == 1.0
