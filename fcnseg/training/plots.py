"""PNG plots of training curves (matplotlib, headless)."""

from __future__ import annotations

import csv
from pathlib import Path


def plot_training_log(log_path: str | Path, out_path: str | Path) -> Path | None:
    """Loss against step and mean IU against training minutes, from a run's log.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log_path, out_path = Path(log_path), Path(out_path)
    if not log_path.exists():
        return None
    rows = list(csv.DictReader(log_path.open()))
    losses = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss")]
    ious = [(float(r["train_minutes"]), 100 * float(r["mean_iu"])) for r in rows if r.get("mean_iu")]
    figure, (loss_axis, iu_axis) = plt.subplots(1, 2, figsize=(10, 4))
    if losses:
        loss_axis.plot(*zip(*losses), marker="o" if len(losses) == 1 else None)  # one point: a line draws nothing
    loss_axis.set(xlabel="step", ylabel="training loss", title="loss")
    if ious:
        iu_axis.plot(*zip(*ious), marker="o")
    iu_axis.set(xlabel="training minutes", ylabel="mean IU (%)", title="validation mean IU")
    figure.tight_layout()
    figure.savefig(out_path, dpi=100)
    plt.close(figure)
    return out_path
