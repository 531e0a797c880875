"""`toolkit serve`: an exported classifier behind the Open Inference Protocol (KServe v2, Triton's HTTP API).

Layers, each importable alone: `options` (ServeOptions, no server libraries), `protocol`
(the v2 JSON and binary tensor codec, numpy only), `batcher` (dynamic batching over one
loaded model per worker), `metrics` (Prometheus), `app` (the Starlette routes) and
`server` (uvicorn, the listening socket and graceful shutdown). The server libraries
are the `[serve]` extra; the runtime underneath is the same TF-free `toolkit.runtime`.
"""

from toolkit.serve.options import ServeOptions

__all__ = ["ServeOptions"]
