"""The search under several devices: rank 0 searches, every rank gets its result.

Rank 0 runs the whole search alone (inner Trainers on its own device) while the other
ranks wait for its result. Two things make that wait safe:

- it is held on a gloo group of its own with a long timeout, because a search easily
  outlasts the trainer's collective timeout (30 minutes by default, NCCL or gloo),
  which would otherwise kill the waiting ranks; gloo also keeps the wait on the CPU
  whatever backend the trainer uses;
- a failed search (or report) on rank 0 is sent to the other ranks as its message, so they stop
  with the same error instead of waiting for a result that never comes.

:func:`local_metrics` keeps a candidate's torchmetrics objects from syncing across the
process group: torchmetrics syncs whenever one exists, and a candidate fit runs on
rank 0 only, so its first ``compute`` would wait forever for ranks that are not there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
from torch import nn

from vtss_lightning.errors import VTSSError

SEARCH_WAIT = timedelta(days=30)
"""How long the other ranks wait for rank 0's search (and its report)."""

T = TypeVar("T")
_GROUPS: dict[int, Any] = {}  # id(default group) -> its long-wait gloo group


def distributed() -> bool:
    """Whether a torch.distributed process group with more than one rank is running."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _wait_group():
    """The long-timeout gloo group, made once per default group (by every rank)."""
    dist = torch.distributed
    key = id(dist.group.WORLD)
    if key not in _GROUPS:
        _GROUPS[key] = dist.new_group(backend="gloo", timeout=SEARCH_WAIT)
    return _GROUPS[key]


def on_rank_zero(trainer, work: Callable[[], T]) -> T:
    """``work()`` on rank 0, its result on every rank (its error too, as a VTSSError).

    Every rank leaves together, after rank 0's work: also the way the report is
    written before any rank returns from ``fit``.

    Without a torch.distributed group (one device, or a strategy without one) the
    trainer's own ``strategy.broadcast`` carries the result.
    """
    if trainer.world_size <= 1:
        return work()
    if not distributed():
        result = work() if trainer.is_global_zero else None
        return trainer.strategy.broadcast(result, src=0)
    group = _wait_group()
    payload: list[Any] = [None]
    failure: BaseException | None = None
    if trainer.is_global_zero:
        try:
            payload = [("result", work())]
        except BaseException as err:  # noqa: BLE001 - sent on, then raised again below
            failure = err
            payload = [("error", f"{type(err).__name__}: {err}")]
    torch.distributed.broadcast_object_list(payload, src=0, group=group)
    if failure is not None:
        raise failure
    kind, value = payload[0]
    if kind == "error":
        raise VTSSError(f"the VTSS search on rank 0 failed: {value}")
    return value


@contextmanager
def local_metrics(model: nn.Module) -> Iterator[None]:
    """The module's torchmetrics objects compute on this rank alone while inside."""
    if not distributed():
        yield
        return
    from torchmetrics import Metric

    metrics = [m for m in model.modules() if isinstance(m, Metric)]
    saved = [(m.sync_on_compute, m.dist_sync_on_step, m._to_sync) for m in metrics]
    for m in metrics:
        m.sync_on_compute = m.dist_sync_on_step = m._to_sync = False
    try:
        yield
    finally:
        for m, (on_compute, on_step, to_sync) in zip(metrics, saved, strict=True):
            m.sync_on_compute, m.dist_sync_on_step, m._to_sync = on_compute, on_step, to_sync
