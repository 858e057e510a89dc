"""strategy="ray": every candidate a Ray Tune trial on a local Ray instance (loopback only)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason='Ray is optional: pip install "vtss-lightning[ray]"')

from vtss_lightning import TabularDataModule  # noqa: E402
from vtss_lightning.search import SearchEngine  # noqa: E402
from vtss_lightning.search.strategies import RetrainScorer, TrainerSettings  # noqa: E402
from vtss_lightning.search.strategies.ray import RayScorer  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


def test_ray_trials_give_the_retrain_losses_and_the_winner_weights(local_ray):
    from vtss_lightning.models import TabularClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 3))
    x[120:] += 1.0
    y = np.array(["neg"] * 120 + ["pos"] * 30)
    dm = TabularDataModule.from_arrays(x, y, batch_size=64)
    dm.setup()
    torch.manual_seed(0)
    model = TabularClassifier(hidden_dims=[8], optimizer="adamw", lr=0.02)
    model.configure_from_data(dm)
    settings = TrainerSettings.from_kwargs({"max_epochs": 3, "accelerator": "cpu"})
    engine = SearchEngine(ratios=[0, 1, 2], verbose=False)
    scorer = RayScorer(model, settings, keep_states=True)
    result = engine.run(dm, scorer)
    local = engine.run(dm, RetrainScorer(model, settings))
    got = [c.val_balanced_loss for c in result.candidates]
    assert all(math.isfinite(v) for v in got)
    assert got == pytest.approx([c.val_balanced_loss for c in local.candidates], abs=1e-6)
    assert result.selected_ratio == local.selected_ratio
    state = scorer.trained_state(result.selected_index_sizes)
    assert state is not None and set(state) == set(model.state_dict())
