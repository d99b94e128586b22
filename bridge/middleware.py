"""What every request passes through before a route: body limit, media type, API key, in-flight limit, log."""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid

from fastapi import FastAPI

from qabridge.errors import Overloaded, PayloadTooLarge, Unauthorized, UnsupportedMediaType

from .config import ServeConfig
from .http_errors import error_response

log = logging.getLogger("qabridge.bridge")

#: Routes whose body is JSON; anything else sent there is refused with 415 before it is parsed.
JSON_ROUTES = ("/api/qa", "/api/qa/batch")
#: Routes open without the API key (liveness probes, the page and its assets, which ask for the key).
OPEN_ROUTES = ("/api/health",)


class BodyLimit:
    """Pure ASGI middleware: 413 for bodies over the limit, counted as they stream in."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    if int(v) > self.limit:
                        return await self._reject(send)
                except ValueError:
                    pass
        seen = 0
        too_big = False

        async def limited_receive():
            nonlocal seen, too_big
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    too_big = True
                    raise PayloadTooLarge(f"request body over {self.limit} bytes")
            return msg

        try:
            await self.app(scope, limited_receive, send)
        except PayloadTooLarge:
            if too_big:
                await self._reject(send)
            else:
                raise

    async def _reject(self, send):
        body = json.dumps(PayloadTooLarge(f"request body over {self.limit} bytes").to_dict()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("", "application/json") or (media.startswith("application/") and media.endswith("+json"))


def install(app: FastAPI, cfg: ServeConfig, inflight: list[int], service=None) -> None:
    """``inflight`` is a one-element counter shared with whoever reports it; with ``service``,
    POST /api/qa is answered before FastAPI's router (fast_route)."""
    if service is not None:
        from .fast_route import FastQA

        app.add_middleware(FastQA, service=service, inflight=inflight)  # added first: innermost, inside CORS and the Guard
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"])

    app.add_middleware(Guard, cfg=cfg, inflight=inflight)


class Guard:
    """Pure ASGI middleware (Starlette's ``@app.middleware("http")`` wraps every request and response
    in extra tasks and streams): API key, media type, in-flight limit, request id, one log line."""

    def __init__(self, app, cfg: ServeConfig, inflight: list[int]):
        self.app = app
        self.cfg = cfg
        self.inflight = inflight

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id", b"").decode("latin-1") or uuid.uuid4().hex[:12]
        t0 = time.perf_counter()
        path, method = scope["path"], scope["method"]
        cfg = self.cfg
        refusal = None
        if cfg.api_key and path.startswith("/api/") and path not in OPEN_ROUTES:
            auth = headers.get(b"authorization", b"").decode("latin-1")
            token = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), cfg.api_key.encode()):
                refusal = error_response(Unauthorized("missing or wrong API key"), headers={"WWW-Authenticate": "Bearer"})
        if refusal is None and method == "POST" and path in JSON_ROUTES:
            ctype = headers.get(b"content-type", b"").decode("latin-1")
            if not _is_json(ctype):
                refusal = error_response(UnsupportedMediaType(f"send the body as Content-Type: application/json, not {ctype!r}"))
        counted = method == "POST"
        if refusal is None and counted and self.inflight[0] >= cfg.max_inflight:
            refusal = error_response(Overloaded("too many requests in flight; retry"))
        status = [500]

        async def send_with_id(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
                msg = {**msg, "headers": [*msg.get("headers", []), (b"x-request-id", rid.encode("latin-1"))]}
            await send(msg)

        if refusal is not None:
            await refusal(scope, receive, send_with_id)
            _log_request(rid, method, path, status[0], t0)
            return
        if counted:
            self.inflight[0] += 1
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if counted:
                self.inflight[0] -= 1
            _log_request(rid, method, path, status[0], t0)


# Readiness polls (scripts/demo.sh, container health checks, load balancers) would flood the log.
QUIET_PATHS = frozenset({"/api/health"})


def _log_request(rid: str, method: str, path: str, status: int, t0: float) -> None:
    level = logging.DEBUG if method == "GET" and path in QUIET_PATHS else logging.INFO
    if log.isEnabledFor(level):
        log.log(level, json.dumps({"id": rid, "method": method, "path": path, "status": status,
                                    "ms": round(1e3 * (time.perf_counter() - t0), 2)}))
