"""A multivariate normal fitted to one class, with shrinkage for small classes."""

from __future__ import annotations

from typing import ClassVar

import torch

from vtss_lightning.data.schema import FeatureSchema
from vtss_lightning.errors import VTSSError
from vtss_lightning.generators._common import (
    check_float,
    cpu_generator,
    group_index,
    project_one_hot,
)
from vtss_lightning.generators.base import SyntheticGenerator


class GaussianGenerator(SyntheticGenerator):
    """Sample from ``N(mean, shrunk covariance)`` of the class rows.

    A parametric baseline between SMOTE (local, no model) and deep generators: it
    captures linear correlations, needs no training, and extrapolates beyond the
    convex hull of the class. Minority classes often have fewer rows than columns,
    so the sample covariance ``S`` is singular; it is shrunk towards a scaled
    identity (the Ledoit-Wolf target)::

        S_s = (1 - s) * S + s * (trace(S) / d) * I

    with ``s = shrinkage``. This is the standard form (it keeps the total variance
    ``trace(S)``), not shrinkage towards ``diag(S)``. If ``S_s`` is still not
    positive definite (``s = 0`` or identical rows) a tiny diagonal jitter is added
    before the Cholesky factorisation.

    Categorical columns: mean and covariance are fitted on all encoded columns
    (one-hot included); each sampled one-hot group is then projected to a valid
    one-hot row by argmax.

    Device: the moments are computed once in float64 on the CPU (``d x d``, cheap and
    available on every backend); sampling runs on :attr:`device` with draws from a
    seeded CPU generator.

    Parameters
    ----------
    shrinkage
        ``s`` in ``[0, 1]``: 0 keeps the sample covariance, 1 keeps only its average
        variance.
    """

    name: ClassVar[str] = "gaussian"
    min_rows: ClassVar[int] = 2

    def __init__(self, shrinkage: float = 0.1) -> None:
        super().__init__()
        self.shrinkage = check_float("GaussianGenerator", "shrinkage", shrinkage, 0.0, 1.0)

    def _fit(self, x: torch.Tensor, schema: FeatureSchema | None, seed: int) -> None:
        assert schema is not None  # base.fit validated x and filled in the schema
        xd = x.detach().to("cpu", torch.float64)
        d = xd.shape[1]
        mean = xd.mean(dim=0)
        cov = torch.cov(xd.T, correction=1).reshape(d, d)
        eye = torch.eye(d, dtype=torch.float64)
        s = self.shrinkage
        cov_s = (1.0 - s) * cov + s * (torch.trace(cov) / max(d, 1)) * eye
        self.mean_ = mean
        self.covariance_ = cov_s
        self._chol = _cholesky_with_jitter(cov_s)
        self._schema = schema

    def _sample(self, n: int, seed: int) -> torch.Tensor:
        device = self.device
        d = self.mean_.shape[0]
        g = cpu_generator(seed)
        z = torch.randn(n, d, generator=g).to(device)
        mean = self.mean_.to(device, torch.float32)
        chol = self._chol.to(device, torch.float32)
        out = torch.addmm(mean, z, chol.T)
        return project_one_hot(out, group_index(self._schema, device))


def _cholesky_with_jitter(cov: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of ``cov``, adding ``eps * I`` (growing) until it exists."""
    d = cov.shape[0]
    if d == 0:
        return cov.clone()
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) == 0:
        return chol
    scale = float(torch.diagonal(cov).abs().mean())
    scale = scale if scale > 0 else 1.0
    eye = torch.eye(d, dtype=cov.dtype)
    for exponent in range(-10, 1):
        chol, info = torch.linalg.cholesky_ex(cov + (10.0**exponent) * scale * eye)
        if int(info) == 0:
            return chol
    raise VTSSError("GaussianGenerator: the covariance could not be factorised; increase shrinkage")
