"""Synthetic-row generators: one instance learns one class's training rows.

Tensor generators (:class:`SMOTEGenerator`, :class:`JitterGenerator`,
:class:`GaussianGenerator`, and the deep :class:`VAEGenerator` and
:class:`DiffusionGenerator`, which also handle images) work on the encoded matrix
on the classifier's device;
frame generators (:class:`CTGANGenerator`, :class:`TVAEGenerator`,
:class:`GaussianCopulaGenerator`) work on the raw feature ``DataFrame`` through SDV,
which is imported only when one of them is fitted (SDV is under the Business Source
License 1.1).
"""

from vtss_lightning.generators.base import SyntheticGenerator
from vtss_lightning.generators.diffusion import DiffusionGenerator
from vtss_lightning.generators.gaussian import GaussianGenerator
from vtss_lightning.generators.jitter import JitterGenerator, RandomOversampler
from vtss_lightning.generators.sdv import CTGANGenerator, GaussianCopulaGenerator, TVAEGenerator
from vtss_lightning.generators.smote import SMOTEGenerator
from vtss_lightning.generators.vae import VAEGenerator

__all__ = [
    "CTGANGenerator",
    "DiffusionGenerator",
    "GaussianCopulaGenerator",
    "GaussianGenerator",
    "JitterGenerator",
    "RandomOversampler",
    "SMOTEGenerator",
    "SyntheticGenerator",
    "TVAEGenerator",
    "VAEGenerator",
]
