"""The generator contract every synthetic-data source honours.

Parameters follow scikit-learn's ``BaseEstimator``: every ``__init__`` argument is
stored under its own name, so :meth:`SyntheticGenerator.get_params` and ``repr``
come from the signature and never miss one (the search fingerprints a generator by
its ``repr``).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import pandas as pd
import torch

from vtss_lightning.data.schema import FeatureSchema
from vtss_lightning.errors import VTSSError
from vtss_lightning.generators._common import check_finite, check_schema

Rows = torch.Tensor | pd.DataFrame


class SyntheticGenerator(ABC):
    """Learns the rows of one class and samples more rows like them.

    The DataModule fits one instance per minority class on that class's *training*
    rows only and calls :meth:`sample` for fixed-size chunks of its pool, each with its
    own seed; candidate sizes then take prefixes of that draw. So a generator's rows
    may depend on ``n`` (SMOTE's, TVAE's and the deep ones' do): pools stay nested.

    ``input_kind`` says which representation the generator works in:

    * ``"tensor"``: the encoded float32 matrix (numeric columns scaled, categorical
      columns one-hot, see :class:`FeatureSchema`); samples come back as a tensor of
      the same width, on :attr:`device`.
    * ``"frame"``: the raw feature ``DataFrame`` (original dtypes, possibly with
      missing values); samples come back as a ``DataFrame`` with the same columns and
      are encoded by the DataModule's training-fitted preprocessing.
    """

    input_kind: ClassVar[Literal["tensor", "frame"]] = "tensor"
    name: ClassVar[str] = "generator"

    def __init__(self) -> None:
        self._device = torch.device("cpu")
        self._fitted = False

    @property
    def device(self) -> torch.device:
        """Device the generator trains and samples on."""
        return self._device

    def to(self, device: torch.device | str) -> SyntheticGenerator:
        """Move the generator to ``device`` (before :meth:`fit`)."""
        self._device = torch.device(device)
        return self

    def fit(
        self, x: Rows, schema: FeatureSchema | None = None, seed: int = 0
    ) -> SyntheticGenerator:
        """Learn the distribution of ``x`` (rows of one class, training split only)."""
        n = len(x)
        if n < self.min_rows:
            raise VTSSError(
                f"{self.name} needs at least {self.min_rows} rows of a class to fit, got {n}"
            )
        if self.input_kind == "tensor":
            if not isinstance(x, torch.Tensor):
                raise VTSSError(
                    f"{type(self).__name__} works on the encoded tensor, not on a DataFrame"
                )
            x = x.to(self.device, torch.float32)
            schema = schema or FeatureSchema.all_numeric(x.shape[1])
            check_schema(schema, x.shape[1], self.name)
            check_finite(x, self.name)
        self._fit(x, schema, seed)
        self._fitted = True
        return self

    def sample(self, n: int, generator_seed: int) -> Rows:
        """Return exactly ``n`` new rows; the same seed gives the same rows."""
        if not self._fitted:
            raise VTSSError(f"{self.name}.sample() called before fit()")
        if n < 0:
            raise VTSSError(f"cannot sample a negative number of rows ({n})")
        rows = self._sample(int(n), int(generator_seed))
        if len(rows) != n:
            raise VTSSError(f"{self.name} returned {len(rows)} rows when {n} were asked for")
        return rows

    #: fewest rows :meth:`fit` accepts.
    min_rows: ClassVar[int] = 1

    @abstractmethod
    def _fit(self, x: Rows, schema: FeatureSchema | None, seed: int) -> None: ...

    @abstractmethod
    def _sample(self, n: int, seed: int) -> Rows: ...

    @classmethod
    def _param_names(cls) -> list[str]:
        """Names of the ``__init__`` parameters, in signature order."""
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop self
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(
                    f"{cls.__name__}.__init__ must name its parameters (no *args or **kwargs) "
                    "so that get_params() and repr can list them"
                )
        return [p.name for p in params]

    def get_params(self) -> dict[str, Any]:
        """The ``__init__`` parameters and their (validated) values, in signature order.

        Each value is read from the attribute of the same name; a subclass must store
        every parameter it takes, or this raises ``AttributeError`` naming it.
        """
        names = self._param_names()
        missing = [n for n in names if not hasattr(self, n)]
        if missing:
            raise AttributeError(
                f"{type(self).__name__} does not store __init__ parameter(s) {missing} "
                "as attributes of the same name"
            )
        return {n: getattr(self, n) for n in names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
