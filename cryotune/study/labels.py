"""Display names of trials: ``(0.5,0.5)-GAN + ℓ1``, ``WGAN-GP + ℓ1``, ``ℓ2-AE``...

The names come from :mod:`cryotune.vocab`; this module adds what a trial's config says beyond
its method (the (alpha, beta) pair, the l_p term, lambda, the reduction, the generator step),
so that arms of one study that differ in any of those keep apart in tables and comparisons.

Example::

    from cryotune.study.labels import method_labels
    method_labels(study.trials)   # one label per trial row
"""

from __future__ import annotations

import pandas as pd

from cryotune import vocab
from cryotune.config import LEGACY_REDUCTION, TrainConfig
from cryotune.vocab import ADVERSARIAL

__all__ = ["method_labels", "trial_reductions"]

_DEFAULT_LR_G = TrainConfig().lr_g


def trial_reductions(trials: pd.DataFrame) -> pd.Series:
    """Each trial's ``config.reduction``: ``sum`` or ``mean`` for the GAN methods, else None.

    Trials recorded before the key existed (no column, or a missing value on a GAN row) ran
    with the per-pixel mean and read as :data:`~cryotune.config.LEGACY_REDUCTION`; the
    autoencoders and baselines, which have no l_p weight, read None.
    """
    method = (trials["config.method"] if "config.method" in trials
              else pd.Series(None, index=trials.index, dtype=object))
    given = (trials["config.reduction"] if "config.reduction" in trials
             else pd.Series(None, index=trials.index, dtype=object))
    out = [(r if isinstance(r, str) else LEGACY_REDUCTION) if m in ADVERSARIAL else None
           for m, r in zip(method, given, strict=True)]
    return pd.Series(out, index=trials.index, dtype=object)


def method_labels(trials: pd.DataFrame, *, with_lambda: bool = True) -> pd.Series:
    """One display name per trial: ``(0.5,0.5)-GAN + ℓ1``, ``WGAN-GP + ℓ1``, ``ℓ2-AE``...

    GAN methods carry their reconstruction term (``+ ℓp``, omitted when lambda is 0, a pure
    GAN) and, with ``with_lambda``, ``(λ=...)`` when lambda is not the paper's 10. A term
    reduced by the mean over pixels rather than the paper's sum says so, with its lambda:
    ``(0.5,0.5)-GAN + ℓ1 (λ=10, mean)`` (``(mean)`` without ``with_lambda``). A generator
    learning rate other than TrainConfig's default is shown too (``lr_g=0.001``), so arms that
    differ in it keep apart.
    """
    def col(name, default=None):
        return trials[name] if name in trials else pd.Series(default, index=trials.index)

    method, alpha, beta = col("config.method", "?"), col("config.alpha"), col("config.beta")
    lam, p = col("config.lambda"), col("config.p")
    reduction = trial_reductions(trials)
    lr_g = pd.to_numeric(col("config.lr_g"), errors="coerce")
    out = []
    for m, a, b, la, pp, red, lr in zip(method, alpha, beta, lam, p, reduction, lr_g,
                                        strict=True):
        lr_note = [f"lr_g={lr:g}"] if pd.notna(lr) and lr != _DEFAULT_LR_G else []
        if m == "beta_gan" and pd.notna(a) and pd.notna(b):
            name = f"({a:g},{b:g})-GAN"
        else:
            name = vocab.label(str(m))
        if m in ADVERSARIAL and pd.notna(la):
            if la > 0:
                name += f" + ℓ{int(pp) if pd.notna(pp) else 1}"
                notes = [f"λ={la:g}"] if with_lambda and (la != 10 or red == "mean") else []
                notes += ["mean"] if red == "mean" else []
                notes += lr_note
                if notes:
                    name += f" ({', '.join(notes)})"
            else:
                name += f" (pure{''.join(', ' + n for n in lr_note)})"
        elif lr_note:
            name += f" ({lr_note[0]})"
        out.append(name)
    return pd.Series(out, index=trials.index, dtype=object)
