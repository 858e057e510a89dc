"""A candidate that runs out of memory is retried smaller, then failed, never fatal.

One oversized candidate (the largest synthetic size is the likeliest) must not end a
search whose other candidates fit: :func:`score_guarded` halves the training batch
after a CUDA out-of-memory error, down to :data:`MIN_BATCH`, and then raises
:class:`CandidateFailed` with the numbers, which the engine records as that
candidate's status before it goes on.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Mapping

import torch

#: Smallest batch size an out-of-memory retry goes down to.
MIN_BATCH = 16


class CandidateFailed(Exception):
    """A candidate could not be trained; ``str(exc)`` is its report status."""


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's ``OutOfMemoryError``, or a ``RuntimeError`` that says the same (CPU, MPS)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_device_memory() -> None:
    """Drop the failed fit's tensors and return cached CUDA blocks to the driver."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def score_guarded(
    scorer, dm, sizes: Mapping[int, int], min_batch: int = MIN_BATCH
) -> tuple[float, str | None]:
    """``scorer.score(dm, sizes)`` with out-of-memory retries at half the batch size.

    Returns the loss and a note when the batch size had to shrink (``None``
    otherwise). Raises :class:`CandidateFailed` when even ``min_batch`` (or a
    full-batch model, which cannot shrink) runs out of memory.
    """
    original = dm.batch_size
    full_batch = scorer.full_batch
    try:
        while True:
            try:
                loss = scorer.score(dm, sizes)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled
                if not is_out_of_memory(exc):
                    raise
                free_device_memory()
                if full_batch or dm.batch_size // 2 < min_batch:
                    raise CandidateFailed(_failure(dm, sizes, full_batch, min_batch)) from None
                dm.batch_size //= 2
                warnings.warn(
                    f"VTSS: out of memory; retrying the candidate with batch size {dm.batch_size}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            note = None
            if dm.batch_size != original:
                note = f"ok: batch size reduced from {original} to {dm.batch_size} (out of memory)"
            return loss, note
    finally:
        dm.batch_size = original


def _failure(dm, sizes: Mapping[int, int], full_batch: bool, min_batch: int) -> str:
    split = dm.active
    rows = int(split.x_train.shape[0]) + sum(int(m) for m in sizes.values())
    width = int(split.x_train.shape[1])
    batch = "the full batch" if full_batch else f"batch size {dm.batch_size} (floor {min_batch})"
    return (
        f"failed: out of memory with {batch}, {rows} training rows x {width} features "
        f"on {split.x_train.device}{_device_memory(split.x_train.device)}"
    )


def _device_memory(device: torch.device) -> str:
    if device.type != "cuda" or not torch.cuda.is_initialized():
        return ""
    free, total = torch.cuda.mem_get_info(device)
    peak = torch.cuda.max_memory_allocated(device)
    mib = 2**20
    return f" ({peak / mib:.0f} MiB peak allocated, {free / mib:.0f} of {total / mib:.0f} MiB free)"


def pool_megabytes(pool) -> float:
    """Memory held by a synthetic pool's rows (MiB), for the report's timing block."""
    return sum(t.element_size() * t.nelement() for t in pool.rows.values()) / 2**20


def device_peak_mb() -> dict[str, float]:
    """``{"cuda_peak_mb": ...}`` when CUDA was used in this process, else ``{}``."""
    if not torch.cuda.is_initialized():
        return {}
    return {"cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20}
