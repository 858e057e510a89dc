"""Bootstrap + Gaussian noise: the simplest generator that is not plain duplication."""

from __future__ import annotations

from typing import ClassVar

import torch

from vtss_lightning.data.schema import FeatureSchema
from vtss_lightning.generators._common import (
    check_float,
    cpu_generator,
)
from vtss_lightning.generators.base import SyntheticGenerator


class JitterGenerator(SyntheticGenerator):
    """Resample class rows with replacement and add ``N(0, scale**2)`` noise.

    With ``scale=0`` this is random oversampling (exact duplicates); a small scale
    gives a smoothed bootstrap. It is the control that tells whether a learned
    generator adds anything beyond "more copies of the same rows".

    Categorical columns: each one-hot group is copied unchanged from the
    bootstrapped row; noise goes to the numeric columns of the schema only.

    Device: runs on :attr:`device`; draws come from a seeded CPU generator, so a
    seed gives the same rows on CPU and GPU.

    Parameters
    ----------
    scale
        Standard deviation of the noise, in the units of the encoded matrix (the
        DataModule standardises numeric columns, so ``1.0`` is one training std).
    """

    name: ClassVar[str] = "jitter"
    min_rows: ClassVar[int] = 1

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = check_float("JitterGenerator", "scale", scale, 0.0)

    def _fit(self, x: torch.Tensor, schema: FeatureSchema | None, seed: int) -> None:
        assert schema is not None  # base.fit validated x and filled in the schema
        self._x = x
        self._numeric = torch.as_tensor(schema.numeric, dtype=torch.long)

    def _sample(self, n: int, seed: int) -> torch.Tensor:
        device = self.device
        x = self._x.to(device)
        numeric = self._numeric.to(device)
        g = cpu_generator(seed)
        base = torch.randint(x.shape[0], (n,), generator=g).to(device)
        noise = torch.randn(n, len(numeric), generator=g).to(device)
        out = x[base]
        if len(numeric) and self.scale > 0:
            out[:, numeric] += self.scale * noise
        return out


class RandomOversampler(JitterGenerator):
    """Random oversampling: exact copies of the class's training rows, drawn with
    replacement (imbalanced-learn's ``RandomOverSampler`` as a generator).

    The classic non-synthetic baseline; at ``synthetic_ratio=1.0`` it balances the
    classes by duplication. It is :class:`JitterGenerator` with no noise.
    """

    name: ClassVar[str] = "random_oversampling"

    def __init__(self) -> None:
        super().__init__(scale=0.0)
