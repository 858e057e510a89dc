"""``vtss_samples.png``: real and synthetic images of each minority class side by side.

A loss curve says whether synthetic images helped; the grid shows what they look
like, which is often the quickest way to see a generator that has collapsed or
is copying its training images.
"""

from __future__ import annotations

from pathlib import Path

import torch

SAMPLES_NAME = "vtss_samples.png"


def image_rows(dm, per_class: int = 8) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(class name, real images, synthetic images)`` per minority class of the final split.

    Real images are the first training images of the class; synthetic images the
    first rows of its pool (what the final model trains on). A class
    whose pool was never drawn (e.g. size 0 selected under K-fold) has none.
    """
    shape = getattr(dm.schema, "image_shape", None)
    split = dm.active  # the hold-out, or all development rows after a K-fold refit
    out = []
    for k, gap in sorted(split.gaps.items()):
        if gap <= 0:
            continue
        real = split.x_train[split.y_train == k][:per_class]
        synth = split.pool.rows.get(k, real[:0])[:per_class]
        out.append(
            (
                dm.class_names[k],
                real.detach().float().cpu().reshape(-1, *shape),
                synth.detach().float().cpu().reshape(-1, *shape),
            )
        )
    return out


def write_sample_grid(dm, directory: str | Path, per_class: int = 8) -> Path | None:
    """Draw the grid into ``directory``; ``None`` (nothing written) for non-image data."""
    schema = getattr(dm, "schema", None)
    if getattr(schema, "image_shape", None) is None or getattr(dm, "holdout", None) is None:
        return None
    rows = image_rows(dm, per_class)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2 * len(rows),
        per_class,
        figsize=(per_class * 0.9 + 1.6, 2 * len(rows) * 0.95 + 0.6),
        squeeze=False,
    )
    for r, (name, real, synth) in enumerate(rows):
        for kind, images, ax_row in (
            ("real", real, axes[2 * r]),
            ("synthetic", synth, axes[2 * r + 1]),
        ):
            for j, ax in enumerate(ax_row):
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if j < len(images):
                    ax.imshow(_displayable(images[j]), cmap="gray", vmin=0.0, vmax=1.0)
            label = f"class {name}\n{kind}" if len(images) else f"class {name}\n{kind}: none drawn"
            ax_row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(
        "VTSS: real (upper) and synthetic (lower) training images per minority class", fontsize=9
    )
    fig.tight_layout()
    path = Path(directory) / SAMPLES_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _displayable(image: torch.Tensor):
    """``(C, H, W)`` in ``[0, 1]`` as an array imshow takes (grey or RGB)."""
    image = image.clamp(0.0, 1.0)
    if image.shape[0] == 1:
        return image[0].numpy()
    if image.shape[0] >= 3:
        return image[:3].permute(1, 2, 0).numpy()
    return image.mean(0).numpy()
