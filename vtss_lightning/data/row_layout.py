"""How a training set's rows lie in memory: real rows, then pool prefixes by class.

The pool is built right after a split's real training rows in one float32 buffer
(:meth:`~vtss_lightning.data.pool.PoolBuilder.prepare`), so a candidate's training set
is a view of that buffer whenever its parts lie back to back there
(:func:`training_rows`), else one preallocated copy in the same layout
(:func:`stack_rows`, the layout of ``torch.cat``). :func:`standalone` compacts a view
before it is pickled.
"""

from __future__ import annotations

import torch


def joined_rows(parts: list[torch.Tensor]) -> torch.Tensor | None:
    """The rows of ``parts``, one part after the other, as a view of their storage when
    they lie back to back there (contiguous, same dtype and row shape), else ``None``.

    This is how a training set (real rows, then pool prefixes) costs no copy: the pool
    is built right after the real rows in one buffer (:meth:`PoolBuilder.prepare`).
    Empty parts are skipped.
    """
    parts = [p for p in parts if len(p)]
    if not parts:
        return None
    first = parts[0]
    storage, offset = first.untyped_storage().data_ptr(), first.storage_offset()
    for part in parts:
        if (
            part.dtype != first.dtype
            or part.device != first.device
            or part.shape[1:] != first.shape[1:]
            or not part.is_contiguous()
            or part.untyped_storage().data_ptr() != storage
            or part.storage_offset() != offset
        ):
            return None
        offset += part.numel()
    shape = (sum(len(p) for p in parts), *first.shape[1:])
    return first.as_strided(shape, _contiguous_strides(shape), first.storage_offset())


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(1, size)
    return tuple(reversed(strides))


def pool_labels(
    blocks: list[tuple[int, torch.Tensor]], head: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """``head`` labels then ``k`` for every row of each ``(k, rows)`` block (one tensor)."""
    n = sum(len(rows) for _, rows in blocks) + (0 if head is None else len(head))
    y = torch.empty(n, dtype=torch.long, device=device)
    start = 0
    if head is not None:
        y[: len(head)] = head
        start = len(head)
    for k, rows in blocks:
        y[start : start + len(rows)] = k
        start += len(rows)
    return y


def stack_rows(
    blocks: list[tuple[int, torch.Tensor]], head: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``head`` rows (features, labels) then every ``(k, rows)`` block labelled ``k``, in
    one preallocated tensor: the layout of ``torch.cat`` without its intermediate
    copies."""
    first = head[0] if head is not None else blocks[0][1]
    n = sum(len(rows) for _, rows in blocks) + (0 if head is None else len(head[0]))
    x = first.new_empty((n, *first.shape[1:]))
    start = 0
    if head is not None:
        x[: len(head[0])] = head[0]
        start = len(head[0])
    for _, rows in blocks:
        x[start : start + len(rows)] = rows
        start += len(rows)
    return x, pool_labels(blocks, None if head is None else head[1], first.device)


def training_rows(
    blocks: list[tuple[int, torch.Tensor]], head: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``head`` rows then every ``(k, rows)`` block labelled ``k``, as :func:`stack_rows`
    lays them out: the features a view of the pool's buffer when the blocks follow the
    head there (:func:`joined_rows`), else one copy; the labels a new tensor.

    A view shares the split's real rows and pool, which later candidates read again:
    it must not be written in place (nothing in VTSS does; the buffer itself is never
    written once built).
    """
    x = joined_rows([head[0], *(rows for _, rows in blocks)])
    if x is None:
        return stack_rows(blocks, head)
    return x, pool_labels(blocks, head[1], x.device)


def standalone(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a compact copy when it is a view into a larger storage (a training set
    in the pool's buffer): pickling a view (Ray's object store) writes its whole
    storage."""
    if t.untyped_storage().nbytes() > t.numel() * t.element_size():
        return t.clone()
    return t
