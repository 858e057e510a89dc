"""SDV-backed generators (CTGAN, TVAE, Gaussian copula) on the raw feature frame.

SDV is imported lazily, inside :meth:`fit`: importing this module (or the
``vtss_lightning.generators`` package) never imports SDV, which is slow to import
and licensed differently from this project.

Licence note: SDV (>= 0.18) and ctgan (>= 0.7) are under the Business Source
License 1.1 -- free to use, except for offering a commercial synthetic-data
service; each release becomes MIT four years after it was published. This module
only *calls* SDV, it vendors none of its code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import pandas as pd

from vtss_lightning.errors import VTSSError
from vtss_lightning.generators._common import check_int
from vtss_lightning.generators._sdv_base import TABLE, SDVGenerator

_LOGGER = logging.getLogger(__name__)
#: CTGAN's discriminator packs ``pac`` rows together; batch sizes must be multiples of it.
_CTGAN_PAC = 10
_COPULA_DISTRIBUTIONS = ("norm", "beta", "truncnorm", "gamma", "uniform", "gaussian_kde")


def _dims(who: str, name: str, value: Sequence[int]) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise VTSSError(f"{who}: {name} must be a sequence of layer widths, got {value!r}")
    return tuple(check_int(who, f"each entry of {name}", v, 1) for v in value)


class CTGANGenerator(SDVGenerator):
    """SDV's CTGAN: a conditional GAN with mode-specific normalisation (Xu et al. 2019).

    The strongest published deep generator for mixed-type tables, and the most
    expensive one here; fit one per minority class (SDV's own conditional sampling
    rejects rows and fails for rare classes).

    Categorical columns: works on the raw frame; object/string/category columns are
    one-hot encoded and sampled through CTGAN's conditional vector, so samples
    contain only categories seen in the class rows. Column sdtypes are taken from the
    pandas dtypes (numeric -> numerical, bool -> boolean, datetime -> datetime, the
    rest categorical); samples come back with the input's dtypes.

    Device: GPU when :attr:`device` is CUDA (``enable_gpu=True`` on that device),
    CPU otherwise.

    Licence: uses SDV/ctgan, Business Source License 1.1 (see module docstring).

    Parameters
    ----------
    epochs, embedding_dim, generator_dim, discriminator_dim, verbose
        Passed to ``sdv.single_table.CTGANSynthesizer``.
    batch_size
        Upper bound on CTGAN's training batch. The batch used is
        ``min(batch_size, rows)`` rounded down to a multiple of 10 (CTGAN's ``pac``),
        and at least 10, so a small class gets one full-data step per epoch rather
        than a padded batch (see :meth:`effective_batch_size`). Sampling runs in
        batches of ``batch_size`` (rounded the same way) to stay fast.
    """

    name: ClassVar[str] = "ctgan"

    def __init__(
        self,
        epochs: int = 300,
        batch_size: int = 500,
        embedding_dim: int = 128,
        generator_dim: Sequence[int] = (256, 256),
        discriminator_dim: Sequence[int] = (256, 256),
        verbose: bool = False,
    ) -> None:
        super().__init__(verbose=verbose)
        who = "CTGANGenerator"
        self.epochs = check_int(who, "epochs", epochs, 1)
        self.batch_size = check_int(who, "batch_size", batch_size, 1)
        self.embedding_dim = check_int(who, "embedding_dim", embedding_dim, 1)
        self.generator_dim = _dims(who, "generator_dim", generator_dim)
        self.discriminator_dim = _dims(who, "discriminator_dim", discriminator_dim)

    def effective_batch_size(self, n_rows: int) -> int:
        """The batch CTGAN trains with on a class of ``n_rows`` rows."""
        batch = min(self.batch_size, n_rows)
        return max(_CTGAN_PAC, batch - batch % _CTGAN_PAC)

    def _make_synthesizer(self, metadata: Any, n_rows: int) -> Any:
        from sdv.single_table import CTGANSynthesizer

        return CTGANSynthesizer(
            metadata,
            epochs=self.epochs,
            batch_size=self.effective_batch_size(n_rows),
            embedding_dim=self.embedding_dim,
            generator_dim=self.generator_dim,
            discriminator_dim=self.discriminator_dim,
            pac=_CTGAN_PAC,
            verbose=self.verbose,
            enable_gpu=self._uses_cuda(),
        )

    def _after_fit(self, synth: Any, metadata: Callable[[], Any], data: pd.DataFrame) -> Any:
        """Sample in batches of ``batch_size`` again (rounded to ``pac``), not the clamped one.

        CTGAN draws samples one training-sized batch at a time; after training a
        10-row class, 10,000 rows would take 1,000 generator passes. Its generator
        stays in train mode (batch-statistics BatchNorm), so the larger batch is
        what upstream CTGAN uses anyway when the batch is not clamped.
        """
        model = getattr(synth, "_model", None)
        if model is not None and hasattr(model, "_batch_size"):
            model._batch_size = max(_CTGAN_PAC, self.batch_size - self.batch_size % _CTGAN_PAC)
        return synth


class TVAEGenerator(SDVGenerator):
    """SDV's TVAE: a variational autoencoder for tables (Xu et al. 2019).

    Usually faster than CTGAN to fit and often as good on small classes.

    Categorical columns: works on the raw frame; categorical columns are one-hot
    encoded inside TVAE and decoded by argmax, so samples contain only categories
    seen in the class rows. Sdtypes come from the pandas dtypes, as for
    :class:`CTGANGenerator`; samples come back with the input's dtypes.

    Device: GPU when :attr:`device` is CUDA (``enable_gpu=True`` on that device),
    CPU otherwise.

    Licence: uses SDV/ctgan, Business Source License 1.1 (see module docstring).

    Parameters
    ----------
    epochs, batch_size, embedding_dim, compress_dims, decompress_dims, verbose
        Passed to ``sdv.single_table.TVAESynthesizer``. TVAE's loader keeps the last
        partial batch, so a class smaller than ``batch_size`` simply trains on one
        full-data batch per epoch.
    """

    name: ClassVar[str] = "tvae"

    def __init__(
        self,
        epochs: int = 300,
        batch_size: int = 500,
        embedding_dim: int = 128,
        compress_dims: Sequence[int] = (128, 128),
        decompress_dims: Sequence[int] = (128, 128),
        verbose: bool = False,
    ) -> None:
        super().__init__(verbose=verbose)
        who = "TVAEGenerator"
        self.epochs = check_int(who, "epochs", epochs, 1)
        self.batch_size = check_int(who, "batch_size", batch_size, 1)
        self.embedding_dim = check_int(who, "embedding_dim", embedding_dim, 1)
        self.compress_dims = _dims(who, "compress_dims", compress_dims)
        self.decompress_dims = _dims(who, "decompress_dims", decompress_dims)

    def _make_synthesizer(self, metadata: Any, n_rows: int) -> Any:
        from sdv.single_table import TVAESynthesizer

        return TVAESynthesizer(
            metadata,
            epochs=self.epochs,
            batch_size=self.batch_size,
            embedding_dim=self.embedding_dim,
            compress_dims=self.compress_dims,
            decompress_dims=self.decompress_dims,
            verbose=self.verbose,
            enable_gpu=self._uses_cuda(),
        )


class GaussianCopulaGenerator(SDVGenerator):
    """SDV's Gaussian copula: per-column marginals joined by a Gaussian correlation.

    No neural training: fits in seconds and is a strong classical baseline
    for the deep SDV generators.

    Categorical columns: works on the raw frame; SDV maps each categorical column to
    a numeric interval per category and back, so samples contain only categories
    seen in the class rows. Sdtypes come from the pandas dtypes, as for
    :class:`CTGANGenerator`; samples come back with the input's dtypes.

    Device: CPU only (numpy/scipy); :attr:`device` is ignored.

    Licence: uses SDV, Business Source License 1.1 (see module docstring).

    Parameters
    ----------
    default_distribution
        Marginal for numeric columns: ``"norm"``, ``"beta"``, ``"truncnorm"``,
        ``"gamma"``, ``"uniform"`` or ``"gaussian_kde"``.
    """

    name: ClassVar[str] = "gaussian_copula"

    def __init__(self, default_distribution: str = "beta") -> None:
        super().__init__(verbose=False)
        if default_distribution not in _COPULA_DISTRIBUTIONS:
            raise VTSSError(
                f"GaussianCopulaGenerator: default_distribution must be one of "
                f"{', '.join(_COPULA_DISTRIBUTIONS)}; got {default_distribution!r}"
            )
        self.default_distribution = default_distribution
        #: columns whose beta fit collapsed and were refitted with ``truncnorm``.
        self.fallback_columns_: list[Any] = []

    def _uses_cuda(self) -> bool:
        return False

    def _make_synthesizer(self, metadata: Any, n_rows: int) -> Any:
        from sdv.single_table import GaussianCopulaSynthesizer

        return GaussianCopulaSynthesizer(metadata, default_distribution=self.default_distribution)

    def _after_fit(self, synth: Any, metadata: Callable[[], Any], data: pd.DataFrame) -> Any:
        """Refit with ``truncnorm`` the columns whose marginal fit collapsed.

        copulas' beta fit sometimes converges to ``a ~ 0, b ~ 1e6`` with ``loc`` at the
        data maximum: a point mass, so the column comes out constant. SDV does not
        notice (copulas only falls back to a normal when the fit raises), so the
        fitted standard deviation is compared with the data's here.
        """
        from scipy import stats

        self.fallback_columns_ = []
        bad = []
        for col, info in synth.get_learned_distributions().items():
            params = info.get("learned_parameters", {})
            if info.get("distribution") != "beta" or col not in data.columns:
                continue
            values = pd.to_numeric(data[col], errors="coerce").dropna().to_numpy(float)
            data_std = float(values.std()) if len(values) else 0.0
            if data_std <= 0:
                continue
            try:
                fit_std = float(
                    stats.beta(params["a"], params["b"], params["loc"], params["scale"]).std()
                )
            except (KeyError, TypeError, ValueError):
                fit_std = float("nan")
            if not 0.25 * data_std <= fit_std <= 4.0 * data_std:  # NaN fails too
                bad.append(col)
        if not bad:
            return synth
        from sdv.single_table import GaussianCopulaSynthesizer

        refit = GaussianCopulaSynthesizer(
            metadata(),
            default_distribution=self.default_distribution,
            numerical_distributions={col: "truncnorm" for col in bad},
        )
        refit.fit({TABLE: data})
        names = list(self._template.columns)
        self.fallback_columns_ = [names[int(col[1:])] for col in bad]
        _LOGGER.info(
            "GaussianCopulaGenerator: degenerate beta fit for %s; refitted with truncnorm",
            self.fallback_columns_,
        )
        return refit
