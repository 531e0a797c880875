"""One process of `toolkit tune --workers N` (`python -m toolkit.tune.worker RUN/tune`): the chief oracle, or a
worker, by KERASTUNER_TUNER_ID; it rebuilds the search from search.json (toolkit.tune.distributed starts it)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    """The chief serves the oracle (it needs no features); a worker runs trials until the oracle stops it."""
    from toolkit.tf_setup import import_tensorflow
    from toolkit.tune.distributed import CHIEF
    from toolkit.tune.search import read_search_record, run_search

    import_tensorflow()
    tune_dir = Path(argv[0])
    config, options = read_search_record(tune_dir)
    is_chief = os.environ.get("KERASTUNER_TUNER_ID") == CHIEF
    run_search(config, options, tune_dir, lambda line: print(line, flush=True), trials=not is_chief)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
