"""What the report says beyond the losses: the curve's shape and the free comparator."""

from __future__ import annotations

from typing import Any

from vtss_lightning.search.report import CandidateResult

#: Relative spread of the mean losses under which the curve is called flat.
FLAT_CURVE_SPREAD = 0.01


def curve_notes(results: list[CandidateResult], extensions: list[float]) -> dict[str, Any]:
    """What the report says about the curve's shape: grid extensions, flatness."""
    out: dict[str, Any] = {}
    if extensions:
        out["grid_extended_to"] = list(extensions)
    losses = [c.val_balanced_loss for c in results if c.val_balanced_loss is not None]
    if len(losses) > 1 and max(losses) - min(losses) < FLAT_CURVE_SPREAD * min(losses):
        out["curve"] = (
            f"flat: every size is within {FLAT_CURVE_SPREAD:.0%} of the best balanced "
            "validation loss; the synthetic size barely matters here"
        )
    return out


def comparators_summary(
    by_split: dict[int, float], n_splits: int, chosen: CandidateResult
) -> dict[str, Any]:
    """The free non-synthetic remedy on the same validation rows, beside the winner."""
    if not by_split:
        return {}
    values = list(by_split.values())
    loss = sum(values) / len(values)
    return {
        "comparators": {
            "logit_adjustment": {
                "what": "the no-synthetic candidate's logits minus the log training priors",
                "val_balanced_loss": loss,
                "splits": len(values),
                "of_splits": n_splits,
                "beats_selected": chosen.val_balanced_loss is not None
                and len(values) == n_splits
                and loss < chosen.val_balanced_loss,
            }
        }
    }
