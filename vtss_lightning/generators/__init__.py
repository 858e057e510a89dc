"""Synthetic-row generators: one instance learns one class's training rows.

Tensor generators (:class:`SMOTEGenerator`, :class:`JitterGenerator`,
:class:`GaussianGenerator`, and the deep :class:`VAEGenerator` and
:class:`DiffusionGenerator`, which also handle images) work on the encoded matrix
on the classifier's device;
frame generators (:class:`CTGANGenerator`, :class:`TVAEGenerator`,
:class:`GaussianCopulaGenerator`) work on the raw feature ``DataFrame`` through SDV,
which is imported only when one of them is fitted (SDV is under the Business Source
License 1.1). :class:`DiffusersGenerator` wraps a Hugging Face ``diffusers`` UNet for
images (the optional ``diffusers`` extra, imported only when one is fitted).

The deep generators (VAE, diffusion, diffusers) also have a *conditional* mode: one
model of every class per split (``conditional=True``, :meth:`SyntheticGenerator.fit_labelled`,
``sample(n, seed, label=k)``) instead of one model per minority class.
"""

from vtss_lightning.generators.base import SyntheticGenerator
from vtss_lightning.generators.diffusers_unet import DiffusersGenerator
from vtss_lightning.generators.diffusion import DiffusionGenerator
from vtss_lightning.generators.gaussian import GaussianGenerator
from vtss_lightning.generators.jitter import JitterGenerator, RandomOversampler
from vtss_lightning.generators.sdv import CTGANGenerator, GaussianCopulaGenerator, TVAEGenerator
from vtss_lightning.generators.smote import SMOTEGenerator
from vtss_lightning.generators.vae import VAEGenerator

__all__ = [
    "CTGANGenerator",
    "DiffusersGenerator",
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
