"""SMOTE in pure torch: interpolate between a class row and one of its neighbours."""

from __future__ import annotations

import warnings
from typing import ClassVar

import torch

from vtss_lightning.data.schema import FeatureSchema
from vtss_lightning.generators._common import (
    check_int,
    cpu_generator,
    group_index,
)
from vtss_lightning.generators.base import SyntheticGenerator

#: Largest distance block (rows x rows) computed at once: 2**24 floats = 64 MiB.
_MAX_BLOCK = 2**24
#: Rows interpolated at once when sampling (bounds the temporaries, not the output).
_SAMPLE_CHUNK = 2**16


def nearest_neighbours(x: torch.Tensor, k: int, max_block: int = _MAX_BLOCK) -> torch.Tensor:
    """Indices ``(n, k)`` of each row's ``k`` nearest other rows (Euclidean).

    Computed in row chunks of at most ``max_block`` distances so that memory stays
    bounded for large classes; the row itself is never its own neighbour.
    """
    n = x.shape[0]
    out = torch.empty(n, k, dtype=torch.long, device=x.device)
    chunk = max(1, min(n, max_block // max(n, 1)))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        dist = torch.cdist(x[start:stop], x)
        rows = torch.arange(stop - start, device=x.device)
        dist[rows, rows + start] = float("inf")
        out[start:stop] = dist.topk(k, dim=1, largest=False).indices
    return out


class SMOTEGenerator(SyntheticGenerator):
    """SMOTE (Chawla et al. 2002) on the encoded matrix, in torch.

    Each new row picks a class row uniformly, one of its ``k_neighbors`` nearest
    class rows uniformly, and a point ``lambda ~ U(0, 1)`` on the segment between
    them. It is cheap, has no training, and stays inside the class's convex hull,
    which makes it the baseline every other generator has to beat.

    Categorical columns: neighbours are searched in the encoded space (one-hot
    columns count as 0/1 coordinates); each one-hot group is copied whole from the
    base row with probability ``1 - lambda``, otherwise from the neighbour, so every
    sample is a valid one-hot row (the SMOTE-NC idea without its median-std term).

    Device: runs on :attr:`device` (``torch.cdist`` + ``topk``, chunked over rows);
    random draws come from a seeded CPU generator, so a seed gives the same rows on
    CPU and GPU.

    Parameters
    ----------
    k_neighbors
        Neighbours to interpolate towards. A class with ``n <= k_neighbors`` rows
        uses ``n - 1`` instead (with a warning); a class needs at least 2 rows.
    """

    name: ClassVar[str] = "smote"
    min_rows: ClassVar[int] = 2

    def __init__(self, k_neighbors: int = 5) -> None:
        super().__init__()
        self.k_neighbors = check_int("SMOTEGenerator", "k_neighbors", k_neighbors, 1)
        #: neighbours actually used after fitting (may be smaller than ``k_neighbors``).
        self.k_: int | None = None

    def _fit(self, x: torch.Tensor, schema: FeatureSchema | None, seed: int) -> None:
        assert schema is not None  # base.fit validated x and filled in the schema
        n = x.shape[0]
        k = self.k_neighbors
        if n <= k:
            warnings.warn(
                f"SMOTEGenerator: the class has only {n} rows, so k_neighbors is reduced "
                f"from {k} to {n - 1}",
                UserWarning,
                stacklevel=3,
            )
            k = n - 1
        self.k_ = k
        self._x = x
        self._schema = schema
        self._neighbours = nearest_neighbours(x, k)

    def _sample(self, n: int, seed: int) -> torch.Tensor:
        device = self.device
        x = self._x.to(device)
        neighbours = self._neighbours.to(device)
        n_rows, k = x.shape[0], neighbours.shape[1]
        groups = group_index(self._schema, device)

        g = cpu_generator(seed)
        base = torch.randint(n_rows, (n,), generator=g).to(device)
        pick = torch.randint(k, (n,), generator=g).to(device)
        lam = torch.rand(n, 1, generator=g).to(device)
        coin = torch.rand(n, len(groups), generator=g).to(device)

        near = neighbours[base, pick]
        out = torch.empty(n, x.shape[1], dtype=x.dtype, device=device)
        # rows in chunks: the temporaries stay at _SAMPLE_CHUNK rows, not 3-4 copies of n
        for start in range(0, n, _SAMPLE_CHUNK):
            rows = slice(start, min(n, start + _SAMPLE_CHUNK))
            x_base, x_near, lam_c = x[base[rows]], x[near[rows]], lam[rows]
            block = torch.addcmul(x_base, lam_c, x_near - x_base)
            for i, cols in enumerate(groups):
                from_near = (coin[rows, i] < lam_c[:, 0]).unsqueeze(1)
                block[:, cols] = torch.where(from_near, x_near[:, cols], x_base[:, cols])
            out[rows] = block
        return out
