"""The synthetic pool: drawn once per class at the largest size, read by prefixes."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from vtss_lightning.errors import VTSSError


class SyntheticPool:
    """Synthetic rows per class, sampled once; candidate sizes read prefixes.

    Taking prefixes of one draw gives nested candidate sets (common random numbers):
    the loss curve across sizes then reflects the size, not fresh sampling noise, and
    the generator is fitted and sampled exactly once per class.

    Parameters
    ----------
    rows
        Encoded synthetic rows per class index, each of shape ``(m_k, d)``.
    """

    def __init__(self, rows: Mapping[int, torch.Tensor]) -> None:
        self.rows = dict(rows)

    @property
    def capacity(self) -> dict[int, int]:
        """Rows available per class."""
        return {k: len(v) for k, v in self.rows.items()}

    def covers(self, sizes: Mapping[int, int]) -> bool:
        """Whether every requested size fits in the pool."""
        cap = self.capacity
        return all(m == 0 or cap.get(k, 0) >= m for k, m in sizes.items())

    def take(self, sizes: Mapping[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """First ``sizes[k]`` rows of each class, with their labels."""
        xs, ys = [], []
        for k, m in sorted(sizes.items()):
            if m == 0:
                continue
            available = len(self.rows.get(k, ()))
            if m > available:
                raise VTSSError(
                    f"synthetic size {m} for class {k} exceeds the pool ({available} rows); "
                    "prepare the pool at the largest candidate size first"
                )
            block = self.rows[k][:m]
            xs.append(block)
            ys.append(torch.full((m,), k, dtype=torch.long, device=block.device))
        if not xs:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
        return torch.cat(xs), torch.cat(ys)

    def to(self, device: torch.device) -> SyntheticPool:
        return SyntheticPool({k: v.to(device) for k, v in self.rows.items()})
