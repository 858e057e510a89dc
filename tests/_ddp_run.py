"""Run one VTSS fit, on one CPU device or two (``ddp_spawn``, gloo); used by the tests.

``python tests/_ddp_run.py ROOT DEVICES STRATEGY``: the report lands in ``ROOT``.
The user's callbacks around VTSSCallback make candidates validate (their torchmetrics
must not wait for the idle rank), slow rank 0 down before the report, and record on
every rank whether the report existed when its ``on_fit_end`` ran
(``ROOT/report_seen-RANK``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytorch_lightning as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import tabular_dm  # noqa: E402

from vtss_lightning import VTSSCallback  # noqa: E402
from vtss_lightning.models import TabularClassifier  # noqa: E402


def outer(trainer) -> bool:
    """The user's trainer, not a candidate's (candidates get copies of these callbacks)."""
    return any(getattr(c, "runs_vtss_search", False) for c in trainer.callbacks)


class SlowRankZero(pl.Callback):
    def on_fit_end(self, trainer, pl_module):
        if trainer.is_global_zero and outer(trainer):
            time.sleep(2)


class ReportSeen(pl.Callback):
    def on_fit_end(self, trainer, pl_module):
        if not outer(trainer):
            return
        root = Path(trainer.default_root_dir)
        seen = (root / "vtss_report.json").exists()
        (root / f"report_seen-{trainer.global_rank}").write_text(str(seen))


def main(root: str, devices: int, strategy: str) -> None:
    pl.seed_everything(0)
    dm = tabular_dm(120, 30, n_test=40, seed=0, batch_size=32)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_epochs=3,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            SlowRankZero(),
            VTSSCallback(ratios=[0, 1, 2], progress=False, folds=None),
            ReportSeen(),
        ],
    )
    trainer.fit(TabularClassifier(hidden_dims=[8], optimizer="adamw", lr=0.01), datamodule=dm)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
