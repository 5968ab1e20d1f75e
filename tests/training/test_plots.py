"""curves.png from log.csv: the loss panel shows even a single logged step."""

import numpy as np
from PIL import Image

from fcnseg.training.plots import plot_training_log


def test_a_log_with_one_row_still_draws_the_loss(tmp_path):
    (tmp_path / "log.csv").write_text("step,train_minutes,lr,loss,mean_iu\n1,0.01,0.001,1.5,\n")
    plot_training_log(tmp_path / "log.csv", tmp_path / "curves.png")
    pixels = np.asarray(Image.open(tmp_path / "curves.png").convert("RGB")).astype(int)
    loss_panel = pixels[:, : pixels.shape[1] // 2]
    line_blue = np.abs(loss_panel - (31, 119, 180)).sum(axis=-1) < 60  # matplotlib's first colour, C0
    assert line_blue.sum() > 20
