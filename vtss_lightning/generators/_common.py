"""Small helpers shared by the tensor generators (not public API)."""

from __future__ import annotations

import math
import numbers

import torch

from vtss_lightning.data.schema import FeatureSchema
from vtss_lightning.errors import VTSSError


def cpu_generator(seed: int) -> torch.Generator:
    """A seeded CPU ``torch.Generator``.

    Draws are made on the CPU and then moved to the generator's device, so one seed
    gives the same rows on CPU and CUDA (a CUDA generator would give other numbers).
    """
    return torch.Generator(device="cpu").manual_seed(int(seed))


def check_schema(schema: FeatureSchema, n_features: int, who: str) -> None:
    """Fail early, with a readable message, when ``schema`` does not fit the matrix."""
    if schema.n_features != n_features:
        raise VTSSError(
            f"{who}: the schema describes {schema.n_features} columns but the data has "
            f"{n_features}; pass the schema built by the DataModule's preprocessing"
        )
    seen: set[int] = set()
    for group in schema.categorical_groups:
        if len(group) == 0:
            raise VTSSError(f"{who}: the schema has an empty categorical group")
        for j in group:
            if not 0 <= j < n_features:
                raise VTSSError(
                    f"{who}: categorical column index {j} is outside 0..{n_features - 1}"
                )
            if j in seen:
                raise VTSSError(f"{who}: column {j} belongs to more than one categorical group")
            seen.add(j)
    for j in schema.numeric:
        if not 0 <= j < n_features:
            raise VTSSError(f"{who}: numeric column index {j} is outside 0..{n_features - 1}")


def group_index(schema: FeatureSchema, device: torch.device) -> list[torch.Tensor]:
    """Column indices of each one-hot group, as long tensors on ``device``."""
    return [torch.as_tensor(g, dtype=torch.long, device=device) for g in schema.categorical_groups]


def project_one_hot(x: torch.Tensor, groups: list[torch.Tensor]) -> torch.Tensor:
    """Replace every one-hot block of ``x`` by the one-hot of its largest entry (in place)."""
    for cols in groups:
        block = x.index_select(1, cols)
        hot = torch.zeros_like(block)
        if block.shape[0] > 0:
            hot.scatter_(1, block.argmax(dim=1, keepdim=True), 1.0)
        x[:, cols] = hot
    return x


def check_finite(x: torch.Tensor, who: str) -> None:
    """Tensor generators need an imputed matrix: NaN would poison distances and moments."""
    if not bool(torch.isfinite(x).all()):
        raise VTSSError(
            f"{who}: the class rows contain NaN or infinite values; impute them in the "
            "preprocessing before fitting a tensor generator"
        )


def check_int(who: str, name: str, value: object, minimum: int) -> int:
    """``value`` as an ``int`` when it is an integer ``>= minimum``, else a VTSSError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise VTSSError(f"{who}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(who: str, name: str, value: object, low: float, high: float = math.inf) -> float:
    """``value`` as a ``float`` when it is a finite number in ``[low, high]``, else a VTSSError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
        or not low <= float(value) <= high
    ):
        bound = f">= {low}" if math.isinf(high) else f"in [{low}, {high}]"
        raise VTSSError(f"{who}: {name} must be a number {bound}, got {value!r}")
    return float(value)
