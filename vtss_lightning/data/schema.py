"""Description of the encoded feature matrix that tensor generators work in."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FeatureSchema:
    """Which columns of the encoded feature matrix are numeric and which are one-hot.

    Tensor generators (SMOTE, jitter, Gaussian) need this so that they never emit a
    fractional one-hot row: numeric columns are continuous, each categorical column is
    a block of one-hot columns of which exactly one is 1.

    Attributes
    ----------
    n_features
        Width of the encoded matrix.
    numeric
        Indices of the continuous columns.
    categorical_groups
        One tuple of column indices per categorical input column (its one-hot block).
    names
        Encoded column names, for messages and reports.
    image_shape
        ``(channels, height, width)`` when each row is a flattened image (pixel values
        in ``[0, 1]``); image-aware generators and classifiers reshape rows to it.
        ``None`` for tables.
    """

    n_features: int
    numeric: tuple[int, ...]
    categorical_groups: tuple[tuple[int, ...], ...] = ()
    names: tuple[str, ...] = field(default=())
    image_shape: tuple[int, int, int] | None = None

    @classmethod
    def all_numeric(cls, n_features: int) -> FeatureSchema:
        """Schema for a matrix with only continuous columns (arrays, images)."""
        return cls(n_features=n_features, numeric=tuple(range(n_features)))

    @classmethod
    def image(cls, channels: int, height: int, width: int) -> FeatureSchema:
        """Schema for flattened ``channels x height x width`` images (all numeric)."""
        n = channels * height * width
        return cls(n_features=n, numeric=tuple(range(n)), image_shape=(channels, height, width))
