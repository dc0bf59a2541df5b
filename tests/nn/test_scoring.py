import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.special import expit

from cryotune import vocab
from cryotune.errors import BadConfig
from cryotune.nn.scoring import (
    BetaScore,
    WassersteinScore,
    clip_weights,
    gradient_penalty,
    make_rule,
)

GRID = (-1.0, -0.5, 0.0, 0.1, 0.5, 1.0)
PAIRS = list(itertools.product(GRID, GRID))
LOG2 = math.log(2.0)


def anchored_reference(u: float, a: float, b: float, label: int) -> float:
    """The anchored rule by quad in t-space: int_{1/2}^t c^(a-1)(1-c)^b dc for label 1,
    -int_{1/2}^t c^a (1-c)^(b-1) dc for label 0, t = sigmoid(u).

    Integrated from the end nearer the singular point (in s = 1 - c when t > 1/2, so 1 - t
    keeps full precision), over geometrically growing pieces so quad resolves c^-1 and the like.
    """
    pa, pb = (a - 1, b) if label == 1 else (a, b - 1)
    sign = 1.0 if label == 1 else -1.0
    if u >= 0:
        def g(s):
            return (1 - s) ** pa * s**pb
        lo, orient = float(expit(-u)), 1.0
    else:
        def g(c):
            return c**pa * (1 - c) ** pb
        lo, orient = float(expit(u)), -1.0
    if lo >= 0.5:
        return 0.0
    edges = np.geomspace(lo, 0.5, max(2, int(np.log2(0.5 / lo)) + 2))
    total = sum(quad(g, x0, x1, epsabs=0, epsrel=1e-13, limit=200)[0]
                for x0, x1 in zip(edges[:-1], edges[1:], strict=True))
    return sign * orient * total


@pytest.fixture(scope="module")
def u_grid():
    return np.concatenate([np.linspace(-20, 20, 33), [-40, -30, -1e-3, 1e-4, 3.3, -7.7, 30, 40]])


@pytest.mark.parametrize("a,b", PAIRS)
def test_values_match_quad(a, b, u_grid):
    rule = BetaScore(a, b)
    u = torch.tensor(u_grid, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quad's roundoff notes near the singular ends
        ref_real = np.array([anchored_reference(x, a, b, 1) for x in u_grid])
        ref_fake = np.array([anchored_reference(x, a, b, 0) for x in u_grid])
    np.testing.assert_allclose(rule.real(u).numpy(), ref_real, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(rule.fake(u).numpy(), ref_fake, rtol=1e-11, atol=1e-14)
    # float32 agrees to its arithmetic's precision, 2 |u| 2^-24 relative (the grid is exact in it)
    u32 = u.float()
    np.testing.assert_allclose(rule.real(u32).double().numpy(), ref_real, rtol=5e-6, atol=1e-7)
    np.testing.assert_allclose(rule.fake(u32).double().numpy(), ref_fake, rtol=5e-6, atol=1e-7)


def test_js_gan_is_binary_cross_entropy():
    u = torch.linspace(-40, 40, 161, dtype=torch.float64)
    rule = make_rule("js_gan")
    torch.testing.assert_close(rule.real(u), torch.log(torch.sigmoid(u)) + LOG2, rtol=1e-12,
                               atol=1e-12)
    # log(1 - t) computed as log(sigmoid(-u)) keeps its precision for large u
    torch.testing.assert_close(rule.fake(u), torch.log(torch.sigmoid(-u)) + LOG2, rtol=1e-12,
                               atol=1e-12)


def test_one_one_is_squared_error():
    u = torch.linspace(-40, 40, 161, dtype=torch.float64)
    t = torch.sigmoid(u)
    rule = BetaScore(1, 1)
    torch.testing.assert_close(rule.real(u), -((1 - t) ** 2) / 2 + 1 / 8, rtol=0, atol=1e-13)
    torch.testing.assert_close(rule.fake(u), -(t**2) / 2 + 1 / 8, rtol=0, atol=1e-13)


@pytest.mark.parametrize("a,b", [(-1, -1), (-0.5, -0.5), (0, 0), (0.1, 1), (1, -1), (0.5, 0.5)])
def test_gradcheck(a, b):
    rule = BetaScore(a, b)
    u = torch.tensor([-30.0, -6.0, -1.5, -1e-3, 0.0, 0.7, 4.0, 25.0], dtype=torch.float64,
                     requires_grad=True)
    assert torch.autograd.gradcheck(rule.real, (u,))
    assert torch.autograd.gradcheck(rule.fake, (u,))
    assert torch.autograd.gradgradcheck(rule.real, (u,))
    assert torch.autograd.gradgradcheck(rule.fake, (u,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("a,b", PAIRS)
def test_gradient_is_the_closed_form(a, b, dtype):
    u = torch.linspace(-40, 40, 81, dtype=dtype, requires_grad=True)
    rule = BetaScore(a, b)
    (g_real,) = torch.autograd.grad(rule.real(u).sum(), u)
    (g_fake,) = torch.autograd.grad(rule.fake(u).sum(), u)
    t = torch.sigmoid(u.detach().double())
    s = torch.sigmoid(-u.detach().double())  # 1 - t without cancellation
    tol = {"rtol": 1e-5, "atol": 0} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 0}
    torch.testing.assert_close(g_real.double(), t**a * s ** (b + 1), **tol)
    torch.testing.assert_close(g_fake.double(), -(t ** (a + 1)) * s**b, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("a,b", PAIRS)
def test_finite_at_the_ends(a, b, dtype):
    u = torch.tensor([-40.0, 40.0], dtype=dtype, requires_grad=True)
    rule = BetaScore(a, b)
    for side in (rule.real, rule.fake):
        value = side(u)
        (grad,) = torch.autograd.grad(value.sum(), u)
        assert value.dtype == dtype and grad.dtype == dtype
        assert torch.isfinite(value).all() and torch.isfinite(grad).all()


def test_tails_beyond_forty_continue_smoothly():
    # (0, 0) is exactly log sigmoid + log 2 at any u, so the closed-form tails are checked there
    u = torch.tensor([-200.0, -60.0, -40.5, 40.5, 60.0, 200.0], dtype=torch.float64)
    rule = BetaScore(0, 0)
    torch.testing.assert_close(rule.real(u), torch.nn.functional.logsigmoid(u) + LOG2)
    torch.testing.assert_close(rule.fake(u), torch.nn.functional.logsigmoid(-u) + LOG2)
    # b = -1: S1 grows linearly, S1(u) - S1(40) = int_40^u t^a dv ~ u - 40
    r = BetaScore(0.5, -1)
    assert torch.allclose(r.real(u[3:]) - r.real(torch.tensor([40.0], dtype=torch.float64)),
                          u[3:] - 40, rtol=1e-12, atol=1e-12)


def test_wasserstein_and_make_rule():
    u = torch.randn(5)
    w = make_rule("wgan")
    assert isinstance(w, WassersteinScore) and make_rule("wgan_gp") == w
    torch.testing.assert_close(w.real(u), u)
    torch.testing.assert_close(w.fake(u), -u)
    assert make_rule("l1_ae") is None and make_rule("l2_ae") is None
    assert make_rule("js_gan", alpha=0.7) == BetaScore(0, 0)
    assert make_rule("beta_gan", 0.5, -0.5) == BetaScore(0.5, -0.5)
    for name in vocab.METHOD_NAMES:  # every registered method has its rule
        assert (make_rule(name) is not None) == vocab.METHODS[name].adversarial


@pytest.mark.parametrize("kwargs,key", [
    ({"method": "vae"}, "method"),
    ({"method": "beta_gan", "alpha": 1.5}, "alpha"),
    ({"method": "beta_gan", "beta": -1.01}, "beta"),
    ({"method": "beta_gan", "alpha": float("nan")}, "alpha"),
])
def test_bad_config(kwargs, key):
    with pytest.raises(BadConfig) as err:
        make_rule(**kwargs)
    assert err.value.where == key


def test_gradient_penalty_on_a_linear_critic():
    # D(x) = <w, x> + c has input gradient w everywhere, so the penalty is mu (||w|| - 1)^2 and
    # its gradient with respect to w is 2 mu (||w|| - 1) w / ||w||.
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 1)).double()
    real = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    fake = torch.rand(4, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    penalty = gradient_penalty(critic, real, fake, mu=10.0)
    w = critic[1].weight.detach()
    norm = w.norm()
    torch.testing.assert_close(penalty, 10.0 * (norm - 1) ** 2)
    penalty.backward()
    torch.testing.assert_close(critic[1].weight.grad, 2 * 10.0 * (norm - 1) * w / norm)
    assert fake.grad is None  # the penalty trains the critic only


def test_gradient_penalty_interpolates_per_sample():
    # D(x) = sum(x^2)/2 has input gradient x~, so the penalty is known for the drawn e.
    real = torch.rand(6, 1, 3, 3, dtype=torch.float64)
    fake = torch.rand(6, 1, 3, 3, dtype=torch.float64)

    def critic(x):
        return 0.5 * x.square().flatten(1).sum(1)

    penalty = gradient_penalty(critic, real, fake, mu=3.0, generator=torch.Generator().manual_seed(5))
    e = torch.rand(6, 1, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    mixed = e * real + (1 - e) * fake
    expected = 3.0 * ((mixed.flatten(1).norm(dim=1) - 1) ** 2).mean()
    torch.testing.assert_close(penalty, expected)


def test_clip_weights():
    layer = torch.nn.Linear(8, 8)
    with torch.no_grad():
        layer.weight.mul_(100)
    before = layer.weight.detach().clone()
    clip_weights(layer, 0.05)
    torch.testing.assert_close(layer.weight, before.clamp(-0.05, 0.05))
    assert layer.bias.abs().max() <= 0.05
    with pytest.raises(BadConfig):
        clip_weights(layer, 0.0)


def test_half_precision_and_autocast():
    rule = BetaScore(0.5, -0.5)
    u = torch.linspace(-8, 8, 33)
    exact = rule.real(u.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(rule.real(u).double(), exact, rtol=1e-6, atol=1e-6)
    half = u.bfloat16().requires_grad_(True)
    value = rule.fake(half)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, rule.fake(half.detach().float()))
    value.sum().backward()
    assert half.grad.dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    rule = BetaScore(-0.5, 0.1)
    u = torch.linspace(-40, 40, 201, dtype=dtype)
    gpu = u.cuda().requires_grad_(True)
    cpu = u.clone().requires_grad_(True)
    for side in ("real", "fake"):
        got, want = getattr(rule, side)(gpu), getattr(rule, side)(cpu)
        assert got.device == gpu.device and got.dtype == dtype
        torch.testing.assert_close(got.cpu(), want)
        (g_gpu,) = torch.autograd.grad(got.sum(), gpu)
        (g_cpu,) = torch.autograd.grad(want.sum(), cpu)
        torch.testing.assert_close(g_gpu.cpu(), g_cpu)
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 1)).to("cuda", dtype)
    x = torch.rand(4, 1, 4, 4, dtype=dtype, device="cuda")
    assert gradient_penalty(critic, x, torch.rand_like(x)).device == x.device
