"""The single registry of names: methods, contamination types, validations, selection goals.

Every other module reads these from here. Adding a learned method is one :class:`Method` entry
in :data:`METHODS` plus its loss in ``cryotune/nn`` (a scoring rule in ``nn/scoring.py``).

Example::

    from cryotune import vocab
    vocab.METHODS["js_gan"].pair          # (0.0, 0.0): JS-GAN is the (0, 0)-GAN
    vocab.ADVERSARIAL                     # ('beta_gan', 'js_gan', 'wgan', 'wgan_gp')
    vocab.label("wgan_gp")                # 'WGAN-GP'
    vocab.goal("test_psnr")               # 'max'
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ADVERSARIAL",
    "AUTOENCODERS",
    "BASELINE_LABELS",
    "CONTAMINATION_TYPES",
    "CONTAMINATIONS",
    "GOALS",
    "METHODS",
    "ROBUSTNESS_GOALS",
    "METHOD_NAMES",
    "SELECT_METRICS",
    "VALIDATIONS",
    "Method",
    "goal",
    "label",
]


@dataclass(frozen=True)
class Method:
    """A learned denoiser, in the paper's words (DESIGN.md "Key semantics").

    Attributes:
        name: the name configs and study rows carry (``config.method``).
        label: the display name in reports and the CLI.
        adversarial: trains a discriminator (a GAN method): ``lambda`` weighs its l_p term.
        rule: the discriminator's scoring rule: ``beta`` (the (alpha, beta) family),
            ``wasserstein``, or None (no discriminator).
        pair: the (alpha, beta) pair the name fixes (``js_gan``: (0, 0)); None when the
            config's alpha and beta apply (``beta_gan``) or the rule has none.
        p: the exponent of the reconstruction term the name fixes (``l1_ae``: 1); None when
            the config's ``p`` applies.
    """

    name: str
    label: str
    adversarial: bool
    rule: str | None = None
    pair: tuple[float, float] | None = None
    p: int | None = None


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("l2_ae", "ℓ2-AE", adversarial=False, p=2),
    Method("l1_ae", "ℓ1-AE", adversarial=False, p=1),
    Method("beta_gan", "(α,β)-GAN", adversarial=True, rule="beta"),
    Method("js_gan", "JS-GAN", adversarial=True, rule="beta", pair=(0.0, 0.0)),
    Method("wgan", "WGAN", adversarial=True, rule="wasserstein"),  # weight clipping
    Method("wgan_gp", "WGAN-GP", adversarial=True, rule="wasserstein"),  # gradient penalty mu
)}
METHOD_NAMES = tuple(METHODS)
ADVERSARIAL = tuple(m.name for m in METHODS.values() if m.adversarial)
AUTOENCODERS = tuple(m.name for m in METHODS.values() if not m.adversarial)
# the classical denoisers' rows carry their cryotune.baselines name; these are their labels
BASELINE_LABELS = {"bm3d": "BM3D", "ksvd": "KSVD", "nlm": "NLM", "cwf": "CWF (no CTF)",
                   "cwf_aspire": "CWF (ASPIRE)"}

# Huber contamination types and what each replaces by noise
CONTAMINATION_TYPES = {"A": "reference replaced", "B": "noisy image replaced",
                       "C": "both replaced"}
# what a trial's ``contamination`` may be: "none" at eps 0
CONTAMINATIONS = ("none", *CONTAMINATION_TYPES)

# downstream checks of denoised test images (cryotune.validate)
VALIDATIONS = ("fsc", "clustering")

# the metrics a study reports, and which way is better
GOALS = {"test_mse": "min", "test_psnr": "max", "test_ssim": "max", "train_mse": "min"}

# what Study.select / `cryotune query --rank-by` rank configurations by, on the validation
# selection score averaged over seeds (cryotune.study.select)
ROBUSTNESS_GOALS = {
    "clean": "the score without contamination (eps 0)",
    "worst": "the worst score over the contaminated cells",
    "worst_ratio": "the worst contaminated score divided by the clean score",
    "cvar": "the mean of the worst q of the contaminated cells (q = 0.25 by default)",
}
# the scores a study may select on (``select.metric``), and which way is better: validation
# only. ``val_*`` is scored on the validation pairs contaminated like the training pairs (what a
# user with real data has); ``oracle_val_*`` on the same pairs clean, which only a simulation
# has, to measure what the robust default loses against it.
SELECT_METRICS = {
    "val_mse_median": "min", "val_mse": "min", "val_psnr": "max", "val_ssim": "max",
    "oracle_val_mse": "min", "oracle_val_mse_median": "min", "oracle_val_psnr": "max",
    "oracle_val_ssim": "max",
}


def label(method: str) -> str:
    """The display name of a method or baseline name; an unknown name is shown as it is."""
    known = METHODS.get(method)
    return known.label if known is not None else BASELINE_LABELS.get(method, method)


def goal(metric: str) -> str:
    """``min`` or ``max``: the better direction of a metric (``min`` when it is not a goal)."""
    return GOALS.get(metric) or SELECT_METRICS.get(metric, "min")
