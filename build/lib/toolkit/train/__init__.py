"""Training: a frozen VGG16 base plus a small new head, written to a self-contained run folder.

config.py    TrainConfig (stored as config.json) and TrainResult
features.py  the frozen base's output, computed once / per view / per epoch, in memmaps
fit.py       compile, callbacks, one `fit_phase` (history and best checkpoint every epoch)
distributed.py  the multi-worker loop (Keras 3's fit cannot run there)
finish.py    the saved model's metrics, plots and run.json
loop.py      `train()`: the stages in order
"""

from toolkit.train.config import TrainConfig, TrainResult
from toolkit.train.loop import train

__all__ = ["TrainConfig", "TrainResult", "train"]
