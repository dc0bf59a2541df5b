import numpy as np
import pytest
import torch
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from cryotune.nn.metrics import mse, psnr, ssim

TOL = {np.float32: 1e-5, np.float64: 1e-10}


def image_pairs(size: int, dtype, kind: str, n: int = 12):
    rng = np.random.default_rng(size)
    if kind == "random":
        clean = rng.random((n, size, size))
    else:  # smooth blobs on a flat background: large flat regions and sharp edges
        yy, xx = np.mgrid[:size, :size] / size
        centres = rng.random((n, 2, 1, 1))
        clean = np.exp(-((yy - centres[:, 0]) ** 2 + (xx - centres[:, 1]) ** 2) / 0.02)
        clean[:, : size // 4] = 0.5
    noisy = clean + 0.2 * rng.standard_normal(clean.shape)
    return clean.astype(dtype), noisy.astype(dtype)


@pytest.mark.parametrize("kind", ["random", "structured"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [16, 17, 32])
def test_against_scikit_image(size, dtype, kind):
    clean, noisy = image_pairs(size, dtype, kind)
    x, y = torch.from_numpy(noisy)[:, None], torch.from_numpy(clean)[:, None]
    tol = TOL[dtype]
    ref_ssim = [structural_similarity(a, b, data_range=1) for a, b in zip(noisy, clean, strict=True)]
    ref_mse = [mean_squared_error(b, a) for a, b in zip(noisy, clean, strict=True)]
    ref_psnr = [peak_signal_noise_ratio(b, a, data_range=1) for a, b in zip(noisy, clean, strict=True)]
    for ours, ref in ((ssim(x, y), ref_ssim), (mse(x, y), ref_mse), (psnr(x, y), ref_psnr)):
        assert ours.shape == (len(clean),) and ours.dtype == x.dtype
        np.testing.assert_allclose(ours.double().numpy(), ref, rtol=tol, atol=tol)
    # N x H x W works the same way
    torch.testing.assert_close(ssim(x[:, 0], y[:, 0]), ssim(x, y))


def test_identical_images():
    x = torch.rand(3, 1, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(ssim(x, x), torch.ones(3, dtype=torch.float64))
    assert torch.isinf(psnr(x, x)).all()
    assert (mse(x, x) == 0).all()


def test_data_range():
    clean, noisy = image_pairs(16, np.float64, "random", n=2)
    x, y = torch.from_numpy(4 * noisy), torch.from_numpy(4 * clean)
    ref = [structural_similarity(a, b, data_range=4) for a, b in zip(4 * noisy, 4 * clean, strict=True)]
    np.testing.assert_allclose(ssim(x, y, data_range=4).numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(psnr(x, y, data_range=4).numpy(),
                               [peak_signal_noise_ratio(b, a, data_range=4)
                                for a, b in zip(4 * noisy, 4 * clean, strict=True)], rtol=1e-10)


def test_bad_shapes():
    with pytest.raises(ValueError, match="at least 7 x 7"):
        ssim(torch.rand(2, 1, 6, 16), torch.rand(2, 1, 6, 16))
    with pytest.raises(ValueError, match="differ in shape"):
        mse(torch.rand(2, 16, 16), torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="N x 1 x H x W"):
        psnr(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16))


def test_half_precision_is_computed_in_float32():
    clean, noisy = image_pairs(16, np.float32, "structured", n=3)
    x, y = torch.from_numpy(noisy).bfloat16(), torch.from_numpy(clean).bfloat16()
    for metric in (mse, psnr, ssim):
        got = metric(x, y)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, metric(x.float(), y.float()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    clean, noisy = image_pairs(17, np.float64, "structured")
    x, y = torch.from_numpy(noisy).to(dtype), torch.from_numpy(clean).to(dtype)
    for metric in (mse, psnr, ssim):
        got = metric(x.cuda(), y.cuda())
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), metric(x, y))
