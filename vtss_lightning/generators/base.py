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

import numpy as np
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

    A **conditional** generator (:attr:`conditional` true) instead learns every class
    at once: the DataModule fits one instance per split with :meth:`fit_labelled` on
    the training rows of all classes and their labels, and samples class ``k`` with
    ``sample(n, seed, label=k)``, in the same seeded chunks. Such a generator
    implements :meth:`_fit_labelled` and :meth:`_sample_class`; :meth:`for_class`
    wraps one of its classes as a per-class generator (a :class:`ClassView`).

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
    #: ``True``: one model of every class (:meth:`fit_labelled`, ``sample(label=k)``);
    #: generators that offer both modes store it from their ``conditional`` parameter.
    conditional: bool = False

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
        if self.conditional:
            raise VTSSError(
                f"{type(self).__name__}(conditional=True) learns every class at once: call "
                "fit_labelled(x, y, schema, seed) with the training rows of all classes"
            )
        x, schema = self._checked_rows(x, schema)
        self._fit(x, schema, seed)
        self._fitted = True
        return self

    def fit_labelled(
        self,
        x: Rows,
        y: torch.Tensor | np.ndarray,
        schema: FeatureSchema | None = None,
        seed: int = 0,
        num_classes: int | None = None,
    ) -> SyntheticGenerator:
        """Learn every class of ``x`` at once: ``y[i]`` is row ``i``'s class index.

        For conditional generators only. ``x`` and ``y`` are the training rows of every
        class (never validation or test rows); ``num_classes`` (default ``max(y) + 1``)
        sizes the class embedding, so a class may have no rows (it cannot be sampled).
        """
        if not self.conditional:
            raise VTSSError(
                f"{self.name} learns one class per fit: call fit(x) with one class's rows"
            )
        labels = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
        if labels.ndim != 1 or len(labels) != len(x):
            raise VTSSError(
                f"{self.name}: fit_labelled needs one label per row, got labels of shape "
                f"{tuple(labels.shape)} for {len(x)} rows"
            )
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise VTSSError(f"{self.name}: labels must be integer class indices")
        labels = labels.cpu().long()
        k = int(labels.max()) + 1 if len(labels) else 0
        num_classes = k if num_classes is None else int(num_classes)
        if len(labels) and (int(labels.min()) < 0 or k > num_classes):
            raise VTSSError(f"{self.name}: labels must lie in 0..{num_classes - 1}")
        x, schema = self._checked_rows(x, schema)
        self.class_counts_ = torch.bincount(labels, minlength=num_classes).tolist()
        self._fit_labelled(x, labels.to(self.device), schema, seed, num_classes)
        self._fitted = True
        return self

    def _checked_rows(
        self, x: Rows, schema: FeatureSchema | None
    ) -> tuple[Rows, FeatureSchema | None]:
        """``x`` on :attr:`device` as float32 (tensor generators) and its checked schema."""
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
        return x, schema

    def sample(self, n: int, generator_seed: int, label: int | None = None) -> Rows:
        """Return exactly ``n`` new rows; the same seed gives the same rows.

        ``label``: the class to draw, for a conditional generator (required there, and
        refused by a per-class generator, which draws the class it was fitted on).
        """
        if not self._fitted:
            raise VTSSError(f"{self.name}.sample() called before fit()")
        if n < 0:
            raise VTSSError(f"cannot sample a negative number of rows ({n})")
        if self.conditional:
            label = self._check_label(label)
            rows = self._sample_class(int(n), int(generator_seed), label)
        elif label is not None:
            raise VTSSError(
                f"{self.name} was fitted on one class: sample it without label= "
                "(label= is for conditional generators)"
            )
        else:
            rows = self._sample(int(n), int(generator_seed))
        if len(rows) != n:
            raise VTSSError(f"{self.name} returned {len(rows)} rows when {n} were asked for")
        return rows

    def _check_label(self, label: int | None) -> int:
        """``label`` as a class index this conditional generator saw training rows of."""
        counts = getattr(self, "class_counts_", [])
        if label is None:
            raise VTSSError(f"{self.name} is conditional: pass label= (the class index to sample)")
        if not 0 <= int(label) < len(counts):
            raise VTSSError(f"{self.name}: label {label} outside 0..{len(counts) - 1}")
        if counts[int(label)] == 0:
            raise VTSSError(f"{self.name}: class {label} had no training rows to learn from")
        return int(label)

    def for_class(self, label: int) -> ClassView:
        """Class ``label`` of this fitted conditional generator, as a per-class generator."""
        if not self.conditional:
            raise VTSSError(f"{self.name} is not conditional: it already models one class")
        if not self._fitted:
            raise VTSSError(f"{self.name}.for_class() called before fit_labelled()")
        return ClassView(self, self._check_label(label))

    #: fewest rows :meth:`fit` accepts.
    min_rows: ClassVar[int] = 1

    @abstractmethod
    def _fit(self, x: Rows, schema: FeatureSchema | None, seed: int) -> None: ...

    @abstractmethod
    def _sample(self, n: int, seed: int) -> Rows: ...

    def _fit_labelled(
        self, x: Rows, y: torch.Tensor, schema: FeatureSchema | None, seed: int, num_classes: int
    ) -> None:
        """Learn every class (conditional generators override this and :meth:`_sample_class`)."""
        raise VTSSError(f"{self.name} has no conditional mode")

    def _sample_class(self, n: int, seed: int, label: int) -> Rows:
        raise VTSSError(f"{self.name} has no conditional mode")

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


class ClassView(SyntheticGenerator):
    """One class of a fitted conditional generator, seen as a fitted per-class generator.

    ``sample(n, seed)`` is ``generator.sample(n, seed, label=label)``; the view shares
    the generator (its weights are not copied) and cannot be fitted itself. The pool
    builder keeps one per minority class of a split, all on the split's one model.
    """

    def __init__(self, generator: SyntheticGenerator, label: int) -> None:
        super().__init__()
        self.generator = generator
        self.label = int(label)
        self._device = generator.device
        self._fitted = generator._fitted

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.generator.name}[class {self.label}]"

    @property
    def input_kind(self) -> str:  # type: ignore[override]
        return self.generator.input_kind

    def to(self, device: torch.device | str) -> ClassView:
        self.generator.to(device)
        self._device = self.generator.device
        return self

    def _fit(self, x: Rows, schema: FeatureSchema | None, seed: int) -> None:
        raise VTSSError("a ClassView is fitted through its conditional generator (fit_labelled)")

    def _sample(self, n: int, seed: int) -> Rows:
        return self.generator.sample(n, seed, label=self.label)
