"""Rank 0's search under a real two-process gloo group: result, error and metrics."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import torch
import torch.multiprocessing as mp
from torchmetrics.classification import MulticlassAccuracy

from vtss_lightning.errors import VTSSError
from vtss_lightning.search.ranks import SEARCH_WAIT, local_metrics, on_rank_zero


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, case: str, out: str) -> None:
    from datetime import timedelta

    torch.distributed.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=timedelta(seconds=60),
    )
    trainer = SimpleNamespace(world_size=2, is_global_zero=rank == 0)
    try:
        if case == "result":
            got = on_rank_zero(trainer, lambda: {"selected": 2, "rank": rank})
        elif case == "error":

            def fail():
                raise ValueError("no pool for class 'pos'")

            try:
                on_rank_zero(trainer, fail)
                got = "no error"
            except (ValueError, VTSSError) as err:
                got = f"{type(err).__name__}: {err}"
        else:  # metrics: rank 0 computes alone, rank 1 never joins a collective

            def compute():
                metric = torch.nn.ModuleList([MulticlassAccuracy(num_classes=2)])
                with local_metrics(metric):
                    metric[0].update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
                    value = float(metric[0].compute())
                return value, metric[0].sync_on_compute  # the flag restored after

            got = on_rank_zero(trainer, compute)
        torch.save(got, f"{out}-{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _run(case: str, tmp_path) -> list:
    out = str(tmp_path / case)
    mp.start_processes(_worker, args=(_free_port(), case, out), nprocs=2, start_method="spawn")
    return [torch.load(f"{out}-{rank}.pt") for rank in range(2)]


def test_every_rank_gets_rank_zeros_result(tmp_path):
    assert _run("result", tmp_path) == [{"selected": 2, "rank": 0}] * 2


def test_a_failed_search_stops_every_rank_with_its_message(tmp_path):
    zero, one = _run("error", tmp_path)
    assert zero == "ValueError: no pool for class 'pos'"  # rank 0 raises its own error
    assert one == (
        "VTSSError: the VTSS search on rank 0 failed: ValueError: no pool for class 'pos'"
    )


def test_candidate_metrics_compute_on_rank_zero_alone(tmp_path):
    assert _run("metrics", tmp_path) == [(0.75, True)] * 2  # macro: (1/2 + 1) / 2


def test_one_process_runs_the_work_in_place():
    trainer = SimpleNamespace(world_size=1, is_global_zero=True)
    assert on_rank_zero(trainer, lambda: 7) == 7
    assert SEARCH_WAIT.days >= 1  # longer than any collective timeout a trainer sets
