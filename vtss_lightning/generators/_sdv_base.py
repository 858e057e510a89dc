"""The shared base of the SDV generators: the raw frame in, the same frame out.

Metadata come from the pandas dtypes, fits and samples are quiet and seeded, and
samples get the input's column names, order and dtypes back. SDV itself is imported
only inside :meth:`SDVGenerator.fit`, as in :mod:`vtss_lightning.generators.sdv`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, ClassVar, Literal

import pandas as pd
import torch

from vtss_lightning._random import seeded
from vtss_lightning.data.schema import FeatureSchema
from vtss_lightning.errors import VTSSError
from vtss_lightning.generators._sdv_runtime import (
    in_process,
    quiet_sdv,
    reseed_sampling,
    sdtype_of,
)
from vtss_lightning.generators.base import SyntheticGenerator

#: Name of the one table in SDV's metadata.
TABLE = "t"


class SDVGenerator(SyntheticGenerator):
    """Shared machinery: metadata from dtypes, seeding, quiet fitting, dtype round trip.

    Subclasses build the SDV synthesizer (:meth:`_make_synthesizer`) and may adjust
    it after fitting (:meth:`_after_fit`).
    """

    input_kind: ClassVar[Literal["tensor", "frame"]] = "frame"
    min_rows: ClassVar[int] = 2

    def __init__(self, verbose: bool = False) -> None:
        super().__init__()
        self.verbose = bool(verbose)
        self._synth: Any = None

    @abstractmethod
    def _make_synthesizer(self, metadata: Any, n_rows: int) -> Any:
        """Build the (unfitted) SDV synthesizer; called with SDV already imported."""

    def _uses_cuda(self) -> bool:
        return self.device.type == "cuda"

    @contextmanager
    def _context(self, seed: int) -> Iterator[None]:
        """Quiet, seeded, and on :attr:`device` (SDV's ``enable_gpu`` means "current CUDA").

        SDV seeds nothing during ``fit``; without the seeded block the same seed would
        give a different model each time and the caller's global RNG streams would move.
        """
        cuda = self._uses_cuda() or (torch.cuda.is_available() and torch.cuda.is_initialized())
        device_ctx = torch.cuda.device(self.device) if self._uses_cuda() else nullcontext()
        with quiet_sdv(not self.verbose), seeded(seed, cuda=cuda), device_ctx, in_process():
            yield

    def _fit(self, x: pd.DataFrame, schema: FeatureSchema | None, seed: int) -> None:
        if not isinstance(x, pd.DataFrame):
            raise VTSSError(
                f"{type(self).__name__} works on the raw feature DataFrame (input_kind='frame'), "
                f"got {type(x).__name__}"
            )
        if x.columns.has_duplicates:
            raise VTSSError(f"{type(self).__name__}: the feature frame has duplicate column names")
        x = x.reset_index(drop=True)
        self._template = x.iloc[:0].copy()
        # SDV gets plain string names c0, c1, ... (it mangles non-string names) and
        # object instead of 'category' (CTGAN/TVAE refuse the category dtype).
        data = x.copy()
        data.columns = [f"c{i}" for i in range(x.shape[1])]
        self._all_null = [c for c in data.columns if data[c].isna().all()]
        data = data.drop(columns=self._all_null)
        for c in data.columns:
            if isinstance(data[c].dtype, pd.CategoricalDtype):
                data[c] = data[c].astype(object)
        self._sdv_columns = list(data.columns)
        self._synth = None
        if not self._sdv_columns:
            return

        from sdv.errors import InvalidDataError, SynthesizerInputError
        from sdv.metadata import Metadata
        from sdv.metadata.errors import InvalidMetadataError

        def metadata() -> Any:
            meta = Metadata()
            meta.add_table(TABLE)
            for c in data.columns:
                meta.add_column(c, table_name=TABLE, sdtype=sdtype_of(data[c].dtype))
            return meta

        try:
            with self._context(seed):
                synth = self._make_synthesizer(metadata(), len(data))
                synth.fit({TABLE: data})
                synth = self._after_fit(synth, metadata, data)
        except (InvalidDataError, InvalidMetadataError, SynthesizerInputError) as err:
            raise VTSSError(f"{type(self).__name__} could not fit the class rows: {err}") from err
        self._synth = synth

    def _after_fit(self, synth: Any, metadata: Callable[[], Any], data: pd.DataFrame) -> Any:
        """Hook to inspect, adjust or refit a fitted synthesizer; identity here."""
        return synth

    def _sample(self, n: int, seed: int) -> pd.DataFrame:
        if n == 0:
            return self._template.copy()
        if self._synth is None:
            out = pd.DataFrame(index=pd.RangeIndex(n))
        else:
            with self._context(seed):
                reseed_sampling(self._synth, seed)
                out = self._synth.sample(n)[TABLE]
            out = out.reset_index(drop=True)
        return self._restore(out, n)

    def _restore(self, out: pd.DataFrame, n: int) -> pd.DataFrame:
        """Original column names, order and dtypes (SDV returns object for categories)."""
        columns = {}
        for i, (name, dtype) in enumerate(self._template.dtypes.items()):
            key = f"c{i}"
            col = out[key] if key in out.columns else pd.Series([None] * n, dtype=object)
            if col.dtype != dtype:
                try:
                    col = col.astype(dtype)
                except (TypeError, ValueError) as err:
                    raise VTSSError(
                        f"{type(self).__name__}: sampled column {name!r} cannot be cast back to "
                        f"{dtype}: {err}"
                    ) from err
            columns[i] = col.reset_index(drop=True)
        frame = pd.DataFrame(columns, index=pd.RangeIndex(n))
        frame.columns = self._template.columns
        return frame
