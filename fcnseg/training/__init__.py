"""End-to-end pixelwise training: the config (``config.py``), what it builds (``setup.py``, ``data.py``), the loss
(``losses.py``, ``sampling.py``) and the loop (``loop.py``). ``train(config)`` is the entry point."""

from fcnseg.training.config import TrainConfig, load_config, make_config, resolve_recipe
from fcnseg.training.interrupts import TrainingInterrupted
from fcnseg.training.loop import TrainingDiverged, TrainState, lr_at, train

__all__ = ["TrainConfig", "TrainState", "TrainingDiverged", "TrainingInterrupted", "load_config", "lr_at",
           "make_config", "resolve_recipe", "train"]
