"""Fixtures shared by the test modules.

The shared pieces that modules bind their own defaults to at import time (a small
imbalanced ``TabularDataModule``, a user's one-layer LightningModule, a quiet
``pl.Trainer``, the progress-line filter) are plain functions and classes in
``tests/helpers.py``; pytest's default import mode puts ``tests/`` on ``sys.path``,
so test modules ``import helpers`` (as ``test_resume`` imports ``test_cli``).
"""

from __future__ import annotations

import pytest
from helpers import quiet_trainer


@pytest.fixture
def tmp_trainer(tmp_path):
    """Build a quiet ``pl.Trainer`` that writes under ``tmp_path``: no logger, no
    checkpoints, no progress bar or model summary; other arguments as given."""

    def build(**kwargs):
        return quiet_trainer(
            default_root_dir=tmp_path, logger=False, enable_checkpointing=False, **kwargs
        )

    return build
