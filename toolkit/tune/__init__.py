"""`toolkit tune`: Keras Tuner over the head on cached features (search.py), its space (space.py), its report."""

from toolkit.tune.search import TuneOptions, TunerKind, search

__all__ = ["TuneOptions", "TunerKind", "search"]
