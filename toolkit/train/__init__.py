"""Training: a frozen VGG16 base plus a small new head, written to a self-contained run folder.

config.py    TrainConfig (stored as config.json), its vocabularies, and TrainResult
features.py  the frozen base's output, computed once / per view / per epoch, in memmaps
cut.py       cached fine-tuning: the frozen blocks below the cut run once per view
fit.py       compile, callbacks, one `fit_phase` (history and best checkpoint every epoch)
distributed.py  the multi-worker loop (Keras 3's fit cannot run there)
finish.py    the saved model's metrics, plots and run.json
loop.py      `train()`: the stages in order

`train` is imported on first use, so the CLI can read TrainConfig's defaults without
loading the training loop.
"""

from toolkit.train.config import TrainConfig, TrainResult

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str):
    if name == "train":
        from toolkit.train.loop import train

        return train
    raise AttributeError(name)
