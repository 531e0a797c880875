"""Batch prediction over a folder of any size: here (local) or on a Ray cluster (ray), into one table.

`toolkit predict MODEL DIR --out predictions.parquet` writes one row per file (path,
label, score, probabilities, error) with either engine; the rows are the same, in the
same order, because both run the same runtime and decoder on the same file list.
`options` holds the defaults; `output` the table writer; `local` and `ray_engine` the
two engines (Ray is the `[ray]` extra, imported only when asked for).
"""

from toolkit.batch.options import BatchOptions, Engine

__all__ = ["BatchOptions", "Engine"]
