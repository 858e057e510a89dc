"""Run one VTSS fit, on one CPU device or two (``ddp_spawn``, gloo); used by the tests.

``python tests/_ddp_run.py ROOT DEVICES STRATEGY``: the report lands in ``ROOT``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import tabular_dm  # noqa: E402

from vtss_lightning import VTSSCallback  # noqa: E402
from vtss_lightning.models import TabularClassifier  # noqa: E402


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
        callbacks=[VTSSCallback(ratios=[0, 1, 2], progress=False, folds=None)],
    )
    trainer.fit(TabularClassifier(hidden_dims=[8], optimizer="adamw", lr=0.01), datamodule=dm)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
