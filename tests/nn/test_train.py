"""Algorithm 1 on tiny real data: every method learns, metrics and losses match independent
computations, the l1/l2 optima are the median/mean, resumes are exact, divergence is caught."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from cryotune.config import TrainConfig, from_dict
from cryotune.errors import BadConfig, BadInput, Diverged
from cryotune.nn.checkpoint import FORMAT, read_checkpoint
from cryotune.nn.train import BEST_NAME, CHECKPOINT_NAME, BestEpoch, Trainer, train

torch.set_num_threads(1)
SIZE, N_TRAIN, N_TEST, BATCH = 16, 160, 40, 20


@pytest.fixture(scope="module")
def blobs():
    """Smooth Gaussian blobs in [0, 1] at random centres, plus white noise of sigma 0.3."""
    rng = np.random.default_rng(0)
    n = N_TRAIN + N_TEST
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    centre = rng.uniform(4, SIZE - 4, size=(n, 2, 1, 1)).astype(np.float32)
    width = rng.uniform(2, 4, size=(n, 1, 1)).astype(np.float32)
    clean = np.exp(-((xx - centre[:, 0]) ** 2 + (yy - centre[:, 1]) ** 2) / (2 * width**2))
    noisy = clean + rng.normal(0, 0.3, size=clean.shape).astype(np.float32)
    return noisy[:, None].astype(np.float32), clean[:, None].astype(np.float32)


def _loaders(noisy, clean, seed=0):
    x, y = torch.from_numpy(clean), torch.from_numpy(noisy)

    def train_batches(epoch):
        order = torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        return [(y[i], x[i]) for i in order.split(BATCH)]

    def test_batches():
        return list(zip(y[N_TRAIN:].split(BATCH), x[N_TRAIN:].split(BATCH), strict=True))

    return train_batches, test_batches


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("method,extra", [
    ("l2_ae", {}), ("l1_ae", {}),
    ("beta_gan", {"alpha": 1.0, "beta": 1.0}), ("beta_gan", {"alpha": 0.5, "beta": -0.5, "p": 2}),
    ("js_gan", {}), ("wgan", {}), ("wgan_gp", {}),
])
def test_every_method_beats_the_noisy_input(blobs, method, extra):
    noisy, clean = blobs
    cfg = TrainConfig(method=method, width=8, epochs=2, lr_g=1e-3, **extra)
    history = train(cfg, *_loaders(noisy, clean))
    assert [r["epoch"] for r in history] == [1, 2]
    noisy_mse = np.mean((noisy[N_TRAIN:] - clean[N_TRAIN:]) ** 2)
    assert history[-1]["test_mse"] < 0.5 * noisy_mse
    if method.endswith("_ae"):
        assert history[-1]["d_loss"] == 0 and history[-1]["g_adv"] == 0


def test_evaluate_matches_scikit_image(blobs):
    noisy, clean = blobs
    trainer = Trainer(TrainConfig(method="l2_ae", width=4, gallery=3), (SIZE, SIZE))
    train_batches, test_batches = _loaders(noisy, clean)
    trainer.train_epoch(train_batches(0))
    got = trainer.evaluate(test_batches())
    out = trainer.denoise(noisy[N_TRAIN:], batch_size=7)
    ref = clean[N_TRAIN:, 0]
    per = np.array([[np.mean((o - c) ** 2), peak_signal_noise_ratio(c, o, data_range=1),
                     structural_similarity(c, o, data_range=1)] for o, c in zip(out, ref, strict=True)])
    for i, key in enumerate(("test_mse", "test_psnr", "test_ssim")):
        assert got[key] == pytest.approx(per[:, i].mean(), rel=1e-4, abs=1e-6)
        assert got[f"{key}_std"] == pytest.approx(per[:, i].std(), rel=1e-3, abs=1e-6)
    assert got["test_images"] == N_TEST
    np.testing.assert_array_equal(trainer.gallery(noisy[N_TRAIN:]), out[:3])


@pytest.mark.parametrize("p", [1, 2])
def test_train_losses_match_a_hand_step(blobs, p):
    """One minibatch, k_d = k_g = 1, JS-GAN: the reported losses are log-sigmoid BCE terms."""
    noisy, clean = blobs
    y, x = torch.from_numpy(noisy[:BATCH]), torch.from_numpy(clean[:BATCH])
    cfg = TrainConfig(method="js_gan", width=4, k_d=1, k_g=1, p=p, lam=3.0)
    trainer = Trainer(cfg, (SIZE, SIZE))
    g0, d0 = copy.deepcopy(trainer.generator), copy.deepcopy(trainer.discriminator)
    got = trainer.train_epoch([(y, x)])
    with torch.no_grad():
        fake = g0(y)
        # anchored at t = 1/2: S(t,1) = log t - log 1/2, S(t,0) = log(1-t) - log 1/2
        d_loss = -(F.logsigmoid(d0(x)).mean() + F.logsigmoid(-d0(fake)).mean() + 2 * np.log(2))
        g_adv = F.logsigmoid(-trainer.discriminator(fake)).mean() + np.log(2)
        err = (fake - x).numpy()
    assert got["d_loss"] == pytest.approx(d_loss.item(), rel=1e-5)
    assert got["g_adv"] == pytest.approx(g_adv.item(), rel=1e-5)
    assert got["g_rec"] == pytest.approx(np.mean(np.abs(err) ** p), rel=1e-5)
    assert got["train_mse"] == pytest.approx(np.mean(err**2), rel=1e-5)
    assert got["images_per_s"] == pytest.approx(BATCH / got["epoch_s"])


@pytest.mark.parametrize("method,statistic", [("l1_ae", np.median), ("l2_ae", np.mean)])
def test_l1_recovers_the_median_and_l2_the_mean(method, statistic):
    """Constant inputs carry no information, so G(y) converges to the loss's optimal constant:
    the median of a skewed target distribution for l1, its mean for l2."""
    rng = np.random.default_rng(1)
    values = rng.exponential(0.5, size=100).astype(np.float32)  # median 0.35, mean 0.5
    x = torch.from_numpy(np.repeat(values, SIZE * SIZE).reshape(-1, 1, SIZE, SIZE))
    y = torch.zeros_like(x)
    cfg = TrainConfig(method=method, width=2, depth=1, g_norm="none", lr_g=1e-2)
    trainer = Trainer(cfg, (SIZE, SIZE))
    for epoch in range(25):
        if epoch == 20:  # settle the Adam oscillation around the optimum
            trainer.opt_g.param_groups[0]["lr"] = 1e-3
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        trainer.train_epoch([(y[i], x[i]) for i in order.split(BATCH)])
    out = trainer.denoise(y[:1])
    other = np.mean if statistic is np.median else np.median
    assert abs(out.mean() - statistic(values)) < 0.03
    assert abs(out.mean() - other(values)) > 0.1


@pytest.mark.parametrize("method", ["beta_gan", "wgan_gp"])
def test_resume_gives_the_same_metrics(blobs, tmp_path, deterministic, method):
    noisy, clean = blobs
    cfg = TrainConfig(method=method, width=4, epochs=2, deterministic=True, seed=3)
    straight = train(cfg, *_loaders(noisy, clean))
    first = train(TrainConfig(**{**vars(cfg), "epochs": 1}), *_loaders(noisy, clean),
                  checkpoint_dir=tmp_path)
    resumed = train(cfg, *_loaders(noisy, clean), checkpoint_dir=tmp_path, resume=True)
    assert resumed[0] == first[0]
    timing = ("epoch_s", "images_per_s")
    for a, b in zip(straight, resumed, strict=True):
        assert {k: v for k, v in a.items() if k not in timing} == \
               {k: v for k, v in b.items() if k not in timing}
    assert read_checkpoint(tmp_path / CHECKPOINT_NAME)["epoch"] == 2


def test_resume_refuses_another_config(blobs, tmp_path):
    noisy, clean = blobs
    cfg = TrainConfig(method="l2_ae", width=4, epochs=1)
    train(cfg, *_loaders(noisy, clean), checkpoint_dir=tmp_path)
    other = TrainConfig(method="l2_ae", width=8, epochs=2)
    with pytest.raises(BadConfig, match="width"):
        train(other, *_loaders(noisy, clean), checkpoint_dir=tmp_path, resume=True)


def test_checkpoint_round_trip(blobs, tmp_path):
    noisy, clean = blobs
    trainer = Trainer(TrainConfig(method="wgan", width=4, lam=0.0), (SIZE, SIZE))
    trainer.train_epoch(_loaders(noisy, clean)[0](0))
    path = trainer.save_checkpoint(tmp_path / "model.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary left
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["format"] == FORMAT and ckpt["epoch"] == 1 and ckpt["config"]["lambda"] == 0.0
    loaded = Trainer.load_checkpoint(path)
    assert loaded.config == trainer.config and loaded.epoch == 1
    np.testing.assert_array_equal(loaded.denoise(noisy[:5]), trainer.denoise(noisy[:5]))
    for a, b in zip(loaded.discriminator.parameters(), trainer.discriminator.parameters(),
                    strict=True):
        assert torch.equal(a, b) and a.abs().max() <= 0.01  # WGAN weights stay clipped


@pytest.mark.parametrize("content", ["state_dict", "text", "missing"])
def test_foreign_model_files_are_refused(tmp_path, content):
    path = tmp_path / "model.pt"
    if content == "state_dict":
        torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    elif content == "text":
        path.write_text("not a model\n")
    with pytest.raises(BadInput) as err:
        Trainer.load_checkpoint(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_exploding_learning_rate_raises_diverged(blobs, tmp_path):
    noisy, clean = blobs

    def explode(record, trainer):
        for opt in (trainer.opt_g, trainer.opt_d):
            opt.param_groups[0]["lr"] = 1e30

    cfg = TrainConfig(method="beta_gan", width=4, epochs=3)
    with pytest.raises(Diverged) as err:
        train(cfg, *_loaders(noisy, clean), checkpoint_dir=tmp_path, on_epoch=explode)
    assert err.value.epoch == 1
    assert err.value.last_metrics["epoch"] == 1
    assert np.isfinite(err.value.last_metrics["test_mse"])
    assert Trainer.load_checkpoint(tmp_path / CHECKPOINT_NAME).epoch == 1  # intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]


def test_wrong_image_size_is_refused(blobs):
    trainer = Trainer(TrainConfig(method="l2_ae", width=4), (32, 32))
    with pytest.raises(BadInput, match="16x16"):
        trainer.denoise(blobs[0][:2])


@pytest.mark.parametrize("data,key,text", [
    ({"alpha": 1.5}, "alpha", "outside [-1, 1]"),
    ({"lambda": -1}, "lambda", "outside [0, inf]"),
    ({"method": "vae"}, "method", "not one of"),
    ({"batch_size": 0}, "batch_size", "outside [1, inf]"),
    ({"lr_g": 0}, "lr_g", "not positive"),
    ({"method": "wgan_gp", "d_norm": "batch"}, "d_norm", "batch norm"),
    ({"p": 3}, "p", "not one of"),
])
def test_bad_configs(data, key, text):
    with pytest.raises(BadConfig) as err:
        from_dict(TrainConfig, data)
    assert err.value.where == key and text in str(err.value)


def test_config_defaults_are_the_papers():
    cfg = from_dict(TrainConfig, {"lambda": 10})
    assert (cfg.lr_d, cfg.lr_g, cfg.batch_size, cfg.k_d, cfg.k_g, cfg.lam, cfg.mu, cfg.arch) == \
           (1e-3, 1e-2, 20, 1, 2, 10.0, 10.0, "resnet")
    assert TrainConfig(method="l2_ae", p=1).loss_p == 2
    assert TrainConfig(method="wgan_gp").critic_norm == "layer"


def test_bf16_channels_last_and_threads_run_on_cpu(blobs):
    noisy, clean = blobs
    cfg = TrainConfig(method="wgan_gp", width=4, bf16=True, channels_last=True, num_threads=1)
    trainer = Trainer(cfg, (SIZE, SIZE))
    assert torch.get_num_threads() == 1
    train_batches, test_batches = _loaders(noisy, clean)
    got = {**trainer.train_epoch(train_batches(0)), **trainer.evaluate(test_batches())}
    assert all(np.isfinite(v) for v in got.values())
    assert trainer.denoise(noisy[:3]).dtype == np.float32


def test_cuda_without_cuda_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BadConfig, match="CUDA is not available"):
        Trainer(TrainConfig(device="cuda", width=4), (SIZE, SIZE))


def test_train_epoch_leaves_the_discriminator_trainable(blobs):
    noisy, clean = blobs
    trainer = Trainer(TrainConfig(method="js_gan", width=4), (SIZE, SIZE))
    trainer.train_epoch(_loaders(noisy, clean)[0](0)[:1])
    assert all(p.requires_grad for p in trainer.discriminator.parameters())


def test_evaluate_scores_any_split_with_the_median_of_per_image_mse(blobs):
    noisy, clean = blobs
    trainer = Trainer(TrainConfig(method="l1_ae", width=4), (SIZE, SIZE))
    train_batches, test_batches = _loaders(noisy, clean)
    trainer.train_epoch(train_batches(0))
    rows = slice(N_TRAIN, N_TRAIN + 25)  # an odd count: numpy's median is the middle value
    pairs = list(zip(torch.from_numpy(noisy[rows]).split(7), torch.from_numpy(clean[rows]).split(7),
                     strict=True))
    got = trainer.evaluate(pairs, prefix="val")
    per_image = ((trainer.denoise(noisy[rows]) - clean[rows, 0]).astype(np.float64) ** 2).mean(axis=(1, 2))
    assert got["val_mse_median"] == pytest.approx(np.median(per_image), rel=1e-5)
    assert got["val_mse"] == pytest.approx(per_image.mean(), rel=1e-5)
    assert got["val_images"] == 25 and not any(k.startswith("test_") for k in got)
    even = trainer.evaluate(pairs[:2], prefix="val")  # 14 images: the mean of the middle two
    assert even["val_mse_median"] == pytest.approx(np.median(per_image[:14]), rel=1e-5)
    assert even["val_mse_median"] != pytest.approx(np.sort(per_image[:14])[6], rel=1e-9)
    assert set(trainer.evaluate(test_batches())) == {k.replace("val_", "test_") for k in got}


def test_best_pt_holds_the_best_validation_epoch(blobs, tmp_path):
    noisy, clean = blobs
    train_batches, test_batches = _loaders(noisy, clean)
    val = [(torch.from_numpy(noisy[i:i + 10]), torch.from_numpy(clean[i:i + 10])) for i in (0, 10)]
    probe = noisy[N_TRAIN:N_TRAIN + 6]
    outputs = {}

    def keep(record, trainer):
        outputs[record["epoch"]] = trainer.denoise(probe)

    # max of val_mse picks a poor epoch: not the last one, so best.pt must differ from it
    cfg = TrainConfig(method="l2_ae", width=4, epochs=4, lr_g=3e-3)
    history = train(cfg, train_batches, test_batches, checkpoint_dir=tmp_path, on_epoch=keep,
                    val_batches=lambda: val, select_metric="val_mse", select_mode="max")
    scores = [r["val_mse"] for r in history]
    best_epoch = int(np.argmax(scores)) + 1
    assert best_epoch != 4
    last = history[-1]
    assert last["best_epoch"] == best_epoch and last["select_score"] == max(scores)
    for key in ("test_mse", "test_psnr", "test_ssim"):
        assert last[f"{key}_at_best"] == history[best_epoch - 1][key]
    best = Trainer.load_checkpoint(tmp_path / BEST_NAME)
    assert best.epoch == best_epoch and best.history[-1]["best_epoch"] == best_epoch
    np.testing.assert_array_equal(best.denoise(probe), outputs[best_epoch])
    assert not np.array_equal(best.denoise(probe), outputs[4])
    last_trainer = Trainer.load_checkpoint(tmp_path / CHECKPOINT_NAME)
    np.testing.assert_array_equal(last_trainer.denoise(probe), outputs[4])
    # a resumed run recovers the best epoch from the history it kept
    resumed = train(TrainConfig(**{**vars(cfg), "epochs": 5}), train_batches, test_batches,
                    checkpoint_dir=tmp_path, resume=True, val_batches=lambda: val,
                    select_metric="val_mse", select_mode="max")
    assert resumed[-1]["select_score"] == max(r["val_mse"] for r in resumed)


def test_default_selection_is_the_median_and_never_reads_test(blobs, tmp_path):
    noisy, clean = blobs
    train_batches, test_batches = _loaders(noisy, clean)
    val = [(torch.from_numpy(noisy[:10]), torch.from_numpy(clean[:10]))]
    history = train(TrainConfig(method="l1_ae", width=4, epochs=2), train_batches, test_batches,
                    val_batches=lambda: val)
    medians = [r["val_mse_median"] for r in history]
    assert history[-1]["best_epoch"] == int(np.argmin(medians)) + 1
    assert history[-1]["select_score"] == min(medians)
    with pytest.raises(BadConfig, match="select.metric.*test split is only reported"):
        BestEpoch("test_mse", "min")
    with pytest.raises(BadConfig, match="select.mode"):
        BestEpoch("val_mse", "lowest")
    with pytest.raises(BadConfig, match="'val_psnr_median' is not reported"):
        BestEpoch("val_psnr_median").update(history[0])
    assert "best_epoch" not in train(TrainConfig(method="l1_ae", width=4, epochs=1), train_batches,
                                     test_batches)[0]
