"""Run the bridge: the app behind the body limit, in uvicorn, with a clean exit on SIGTERM.

The pieces live in modules of their own: ``config`` (ServeConfig), ``registry`` (models and
health), ``service`` (answering), ``http_errors`` (error bodies), ``middleware`` (limits, key,
media type), ``routes`` (the API).
"""

from __future__ import annotations

import logging
import signal

from .config import ServeConfig
from .middleware import BodyLimit
from .routes import create_app


def build_app(cfg: ServeConfig, **kw):
    """The ASGI app exactly as `qabridge serve` runs it (for uvicorn, tests or another server)."""
    return BodyLimit(create_app(cfg, **kw), cfg.max_body_bytes)


def serve(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info") -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app = build_app(cfg)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal; a no-op handler
    # underneath turns that into a clean exit 0 once in-flight requests are done.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=30)
