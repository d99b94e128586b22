"""The QA bridge: an ASGI app (FastAPI) over the llama.cpp engine and the numpy span head."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from qabridge._version import __version__
from qabridge.errors import (
    EngineUnavailable,
    ModelNotFound,
    PayloadTooLarge,
    QABridgeError,
    UsageError,
)

from qabridge.core.decode import Span, distinct_top
from .llama_engine import LlamaCppEngine
from qabridge.core.model_file import ModelFile
from qabridge.core.pipeline import QAPipeline
from .llama_engine import gguf_pipeline
from .schemas import (
    AnswerItem,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    HealthResponse,
    ModelInfo,
    QARequest,
    QAResponse,
    RankedPassage,
)

log = logging.getLogger("qabridge.bridge")


def default_contexts() -> int:
    """llama.cpp contexts (requests encoded at once) when not given: up to 4, one per core."""
    return min(4, os.cpu_count() or 1)


@dataclass
class ServeConfig:
    model_path: Path | None = None
    model_name: str | None = None
    extra_models: dict[str, Path] = field(default_factory=dict)
    max_body_bytes: int = 2_000_000
    max_context_chars: int = 400_000
    max_batch: int = 64
    max_documents: int = 200
    request_timeout_s: float = 120.0
    max_inflight: int = 64
    n_contexts: int = field(default_factory=default_contexts)
    n_threads: int | None = None
    flash_attn: bool = True
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    log_text: bool = False
    ollama_host: str | None = None
    ollama_models: list[str] = field(default_factory=list)
    embedding_model: str | None = None  # Ollama model for /api/embed (passage ranking)
    embedding_gguf: Path | None = None  # local embedding GGUF: ranking without Ollama, and the fallback
    ollama_poll_s: float = 1.0


@dataclass
class LoadedModel:
    name: str
    file: ModelFile
    engine: LlamaCppEngine
    pipeline: QAPipeline
    sha256: str
    source: str = "file"


def _sha256(path: Path) -> str:
    from qabridge.core.hashing import sha256_file

    return sha256_file(path)


def load_model(name: str, path: Path, cfg: ServeConfig, source: str = "file") -> LoadedModel:
    pipe = gguf_pipeline(path, n_threads=cfg.n_threads, flash_attn=cfg.flash_attn, n_contexts=cfg.n_contexts)
    return LoadedModel(name, pipe.encoder.file, pipe.encoder, pipe, _sha256(path), source)


class Bridge:
    """Models, limits and the worker threads that call into llama.cpp."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.models: dict[str, LoadedModel] = {}
        self.default: str | None = None
        self.state = "loading"
        self.error: str | None = None
        self.inflight = 0
        self.executor = ThreadPoolExecutor(max_workers=max(1, cfg.n_contexts), thread_name_prefix="qabridge-engine")
        self._lock = threading.Lock()
        self.ollama = None
        self.watch = None
        self.retriever = None
        self.pending_ollama: list[str] = list(cfg.ollama_models)
        self._embed_engine = None

    # -- lifecycle ----------------------------------------------------------------------------
    def load(self) -> None:
        try:
            if self.cfg.model_path is None and not self.cfg.ollama_models:
                raise UsageError("no model given")
            if self.cfg.model_path is not None:
                name = self.cfg.model_name or _model_name(self.cfg.model_path)
                self.models[name] = load_model(name, Path(self.cfg.model_path), self.cfg)
                self.default = name
            for extra, p in self.cfg.extra_models.items():
                self.models[extra] = load_model(extra, Path(p), self.cfg)
            if self.cfg.ollama_host:
                from .ollama import OllamaClient, OllamaWatch

                self.ollama = OllamaClient(self.cfg.ollama_host, timeout=self.cfg.request_timeout_s)
                self.watch = OllamaWatch(self.ollama, self.cfg.ollama_poll_s)
                self.watch.start()
                self.load_pending_ollama()
                if not self.models:
                    raise EngineUnavailable(f"none of the Ollama models could be loaded from {self.ollama.host}")
            self._setup_retriever()
            self.state = "ok"
        except QABridgeError as exc:
            self.state, self.error = "error", exc.message
            log.error("model load failed: %s", exc.message)
        except Exception as exc:  # keep serving health with the reason
            self.state, self.error = "error", f"{exc.__class__.__name__}: {exc}"
            log.exception("model load failed")

    def load_pending_ollama(self) -> None:
        """Load the Ollama models not loaded yet (at start, and again when Ollama comes back)."""
        if self.ollama is None or not self.pending_ollama:
            return
        with self._lock:
            for name in list(self.pending_ollama):
                try:
                    om = self.ollama.show(name)
                except EngineUnavailable:
                    return  # Ollama away: retried when the watch sees it back
                self.models[name] = load_model(name, om.blob, self.cfg, source="ollama")
                self.pending_ollama.remove(name)
                if self.default is None:
                    self.default = name

    def _setup_retriever(self) -> None:
        from .retrieval import LocalEmbedder, OllamaEmbedder, Retriever

        primary = OllamaEmbedder(self.ollama, self.cfg.embedding_model) if self.ollama and self.cfg.embedding_model else None
        fallback = None
        if self.cfg.embedding_gguf is not None:
            mf = ModelFile(self.cfg.embedding_gguf, require_qa=False)
            self._embed_engine = LlamaCppEngine(mf, n_threads=self.cfg.n_threads, flash_attn=self.cfg.flash_attn)
            fallback = LocalEmbedder(self._embed_engine, mf.tokenizer, mf.path.name)
        elif self.default in self.models:
            m = self.models[self.default]
            fallback = LocalEmbedder(m.engine, m.file.tokenizer, m.file.path.name)
        self.retriever = Retriever(primary, fallback, self.watch)

    def status(self) -> str:
        if self.state != "ok":
            return self.state
        if self.watch is not None:
            if self.watch.up and self.pending_ollama:
                self.load_pending_ollama()
            if not self.watch.up or self.pending_ollama:
                return "degraded"
        return "ok"

    def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        self.executor.shutdown(wait=True)
        for m in self.models.values():
            m.engine.close()
        if self._embed_engine is not None:
            self._embed_engine.close()

    # -- answering ----------------------------------------------------------------------------
    def pick(self, name: str | None) -> LoadedModel:
        if self.state == "loading":
            raise EngineUnavailable("the model is still loading", code="model_loading")
        if self.state == "error" and not self.models:
            raise EngineUnavailable(f"no model could be loaded: {self.error}", code="model_unavailable")
        key = name or self.default
        if key not in self.models:
            raise ModelNotFound(f"unknown model {name!r}; see GET /api/models")
        return self.models[key]

    def check(self, req: QARequest) -> None:
        if req.context is None and not req.documents:
            raise UsageError("give a context (or documents)", code="missing_context")
        if req.context is not None and req.documents:
            raise UsageError("give either context or documents, not both", code="invalid_request")
        texts = [req.question] + ([req.context] if req.context is not None else list(req.documents or []))
        for t in texts:
            try:
                t.encode("utf-8")
            except UnicodeEncodeError:
                raise UsageError("text is not valid Unicode (lone surrogate)", code="invalid_unicode", status=422) from None
        if not req.question.strip():
            raise UsageError("question is empty", code="empty_question")
        if req.context is not None and not req.context.strip():
            raise UsageError("context is empty", code="empty_context")
        total = len(req.context) if req.context is not None else sum(len(d) for d in req.documents or [])
        if total > self.cfg.max_context_chars:
            raise PayloadTooLarge(f"context is {total} characters; the limit is {self.cfg.max_context_chars}", code="context_too_long")
        if req.documents and len(req.documents) > self.cfg.max_documents:
            raise PayloadTooLarge(f"{len(req.documents)} documents; the limit is {self.cfg.max_documents}", code="too_many_documents")

    def answer_sync(self, req: QARequest, deadline: float | None = None) -> QAResponse:
        m = self.pick(req.model)
        if req.context is not None:
            pred = m.pipeline.predict(req.question, req.context, top_k=req.top_k, max_answer_len=req.max_answer_len,
                                      deadline=deadline)
            return _response(pred.spans, req.context, m, pred.n_windows, pred.timing_ms)
        return self._answer_documents(m, req, deadline)

    def _answer_documents(self, m: LoadedModel, req: QARequest, deadline: float | None = None) -> QAResponse:
        docs = list(req.documents or [])
        t0 = time.perf_counter()
        ranked, used = self.retriever.rank(req.question, docs)
        t1 = time.perf_counter()
        cands: list[tuple[Span, int]] = []
        windows = 0
        for passage, _sim in ranked[: req.top_documents]:
            text = docs[passage.document][passage.start : passage.end]
            try:
                pred = m.pipeline.predict(req.question, text, top_k=req.top_k, max_answer_len=req.max_answer_len,
                                          deadline=deadline)
            except UsageError:
                continue  # a passage with no tokens
            windows += pred.n_windows
            for sp in pred.spans:
                cands.append((Span(sp.score, sp.start + passage.start, sp.end + passage.start, sp.window), passage.document))
        t2 = time.perf_counter()
        top = distinct_top(cands, key=lambda c: (c[1], c[0].start, c[0].end), score=lambda c: c[0].score, top_k=req.top_k)
        items = [AnswerItem(answer=docs[d][sp.start : sp.end], score=sp.score, start=sp.start, end=sp.end, document=d) for sp, d in top]
        first = items[0] if items else AnswerItem(answer="", score=0.0, start=0, end=0, document=None)
        return QAResponse(
            answer=first.answer, score=first.score, start=first.start, end=first.end, document=first.document,
            answers=items, model=m.name, engine=m.engine.name, windows=windows,
            timing_ms={"rank": round(1e3 * (t1 - t0), 3), "read": round(1e3 * (t2 - t1), 3)},
            ranking=[RankedPassage(document=p.document, start=p.start, end=p.end, similarity=round(sim, 6))
                     for p, sim in ranked[: req.top_documents]],
            embedder=used,
        )

    async def answer(self, req: QARequest) -> QAResponse:
        self.check(req)
        m = self.pick(req.model)
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.cfg.request_timeout_s
        # Queued requests count as demand, so the engine splits its threads before they reach it.
        with m.engine.demand():
            fut = loop.run_in_executor(self.executor, self.answer_sync, req, deadline)
            # After a 504 the worker still finishes (or stops at the deadline); retrieve its outcome quietly.
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            try:
                return await asyncio.wait_for(asyncio.shield(fut), timeout=self.cfg.request_timeout_s)
            except asyncio.TimeoutError:
                raise QABridgeError(f"request took longer than {self.cfg.request_timeout_s:g} s", code="timeout", status=504) from None


def _model_name(path: Path) -> str:
    stem = Path(path).name
    for suf in (".gguf",):
        stem = stem.removesuffix(suf)
    return stem


def _response(spans: list[Span], context: str, m: LoadedModel, n_windows: int, timing: dict, doc: int | None = None) -> QAResponse:
    items = [AnswerItem(answer=context[s.start : s.end], score=s.score, start=s.start, end=s.end, document=doc) for s in spans]
    best = items[0] if items else AnswerItem(answer="", score=0.0, start=0, end=0, document=doc)
    return QAResponse(
        answer=best.answer, score=best.score, start=best.start, end=best.end, document=best.document,
        answers=items, model=m.name, engine=m.engine.name, windows=n_windows,
        timing_ms={k: round(v, 3) for k, v in timing.items()},
    )


# -- errors --------------------------------------------------------------------------------------
_PYDANTIC_CODES = {
    "missing": "missing_field",
    "json_invalid": "invalid_json",
    "string_too_short": "empty_field",
    "too_short": "empty_field",
    "greater_than_equal": "out_of_range",
    "less_than_equal": "out_of_range",
    "greater_than": "out_of_range",
    "less_than": "out_of_range",
    "extra_forbidden": "unknown_field",
    "string_unicode": "invalid_unicode",
}


def _validation_error(errors: list) -> tuple[int, dict]:
    first = errors[0] if errors else {"type": "invalid", "loc": (), "msg": "invalid request"}
    etype = str(first.get("type", "invalid"))
    code = _PYDANTIC_CODES.get(etype, "invalid_type" if etype.endswith("_type") or "parsing" in etype else "invalid_request")
    loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
    msg = f"{loc}: {first.get('msg')}" if loc else str(first.get("msg"))
    status = 400 if code == "invalid_json" else 422
    return status, {"error": {"code": code, "message": msg}}


def _error_response(exc: QABridgeError, headers: dict | None = None) -> JSONResponse:
    if exc.status == 503 and headers is None:
        headers = {"Retry-After": "1"}
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


def _as_error_dict(exc: Exception) -> dict:
    if isinstance(exc, QABridgeError):
        return exc.to_dict()
    if isinstance(exc, ValidationError):
        return _validation_error(exc.errors())[1]
    return {"error": {"code": "internal_error", "message": "internal error"}}


# -- app ------------------------------------------------------------------------------------------
class _BodyLimit:
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
                    raise PayloadTooLarge(f"request body over {self.limit} bytes", code="payload_too_large")
            return msg

        try:
            await self.app(scope, limited_receive, send)
        except PayloadTooLarge:
            if too_big:
                await self._reject(send)
            else:
                raise

    async def _reject(self, send):
        body = json.dumps({"error": {"code": "payload_too_large", "message": f"request body over {self.limit} bytes"}}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(cfg: ServeConfig, *, bridge: Bridge | None = None, load_in_background: bool = True) -> FastAPI:
    from contextlib import asynccontextmanager

    b = bridge or Bridge(cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if b.state == "loading":
            if load_in_background:
                threading.Thread(target=b.load, name="qabridge-load", daemon=True).start()
            else:
                b.load()
        yield
        await asyncio.get_running_loop().run_in_executor(None, b.close)

    app = FastAPI(
        title="qabridge",
        version=__version__,
        description="Extractive question answering: BERT encoder in llama.cpp, span head in Python.",
        lifespan=lifespan,
        responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
                   422: {"model": ErrorResponse}, 429: {"model": ErrorResponse}, 503: {"model": ErrorResponse},
                   504: {"model": ErrorResponse}},
    )
    app.state.bridge = b

    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"])

    @app.middleware("http")
    async def guard(request: Request, call_next):
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex[:12]
        t0 = time.perf_counter()
        path = request.url.path
        if cfg.api_key and path != "/api/health":
            auth = request.headers.get("authorization", "")
            token = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), cfg.api_key.encode()):
                resp = JSONResponse({"error": {"code": "unauthorized", "message": "missing or wrong API key"}}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
                _log_request(rid, request, resp.status_code, t0)
                return resp
        counted = request.method == "POST"
        if counted:
            if b.inflight >= cfg.max_inflight:
                resp = JSONResponse({"error": {"code": "overloaded", "message": "too many requests in flight; retry"}},
                                    status_code=429, headers={"Retry-After": "1"})
                _log_request(rid, request, 429, t0)
                return resp
            b.inflight += 1
        try:
            resp = await call_next(request)
        finally:
            if counted:
                b.inflight -= 1
        resp.headers["x-request-id"] = rid
        _log_request(rid, request, resp.status_code, t0)
        return resp

    @app.exception_handler(QABridgeError)
    async def _qab(request: Request, exc: QABridgeError):
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _val(request: Request, exc: RequestValidationError):
        status, body = _validation_error(list(exc.errors()))
        return JSONResponse(body, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception):
        log.exception("unhandled error")
        return JSONResponse({"error": {"code": "internal_error", "message": "internal error"}}, status_code=500)

    @app.post("/api/qa", response_model=QAResponse, summary="Answer one question from a context")
    async def qa(req: QARequest) -> QAResponse:
        return await b.answer(req)

    @app.post("/api/qa/batch", response_model=BatchResponse, summary="Answer several questions; errors in place")
    async def qa_batch(req: BatchRequest) -> JSONResponse:
        if len(req.qa_pairs) > cfg.max_batch:
            raise PayloadTooLarge(f"{len(req.qa_pairs)} items; the batch limit is {cfg.max_batch}", code="batch_too_large")

        async def one(item: dict):
            try:
                r = QARequest.model_validate(item)
                return (await b.answer(r)).model_dump()
            except Exception as exc:  # each item fails on its own
                if not isinstance(exc, (QABridgeError, ValidationError)):
                    log.exception("batch item failed")
                return _as_error_dict(exc)

        results = await asyncio.gather(*(one(i) for i in req.qa_pairs))
        return JSONResponse({"results": list(results)})

    @app.get("/api/health", response_model=HealthResponse, summary="Liveness and readiness")
    async def health() -> HealthResponse:
        status = await asyncio.get_running_loop().run_in_executor(None, b.status)
        ready = b.state == "ok" and b.default in b.models
        ollama = None
        if b.watch is not None:
            ollama = {"host": b.ollama.host, "up": b.watch.up, "version": b.watch.version,
                      "pending_models": list(b.pending_ollama)}
        return HealthResponse(
            status=status, ready=ready,
            engine=b.models[b.default].engine.name if ready else None,
            model=b.default, models={k: f"{m.engine.name} ({m.source})" for k, m in b.models.items()},
            ollama=ollama, error=b.error,
            embedding_cache=b.retriever.cache.stats() if b.retriever else None,
        )

    @app.get("/api/models", summary="Models this bridge can serve")
    async def models() -> dict:
        return {"default": b.default, "models": [_info(m).model_dump() for m in b.models.values()]}

    @app.get("/api/model/info", response_model=ModelInfo, summary="Metadata of a model (default: the bridge's default)")
    async def model_info(model: str | None = None) -> ModelInfo:
        return _info(b.pick(model))

    return app


def _info(m: LoadedModel) -> ModelInfo:
    meta = m.file.qabridge_metadata()
    return ModelInfo(
        name=m.name, file=str(m.file.path), size=m.file.path.stat().st_size, sha256=m.sha256,
        quantization=m.file.outtype, max_seq_len=m.file.window_spec.max_seq_len, doc_stride=m.file.window_spec.doc_stride,
        engine=m.engine.name, source=m.source, metadata={k: _jsonable(v) for k, v in meta.items()},
    )


def _jsonable(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)


def _log_request(rid: str, request: Request, status: int, t0: float) -> None:
    log.info(json.dumps({"id": rid, "method": request.method, "path": request.url.path, "status": status,
                         "ms": round(1e3 * (time.perf_counter() - t0), 2)}))


def serve(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info") -> None:
    import signal

    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app = _BodyLimit(create_app(cfg), cfg.max_body_bytes)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal; a no-op handler
    # underneath turns that into a clean exit 0 once in-flight requests are done.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=30)


def env_api_key() -> str | None:
    return os.environ.get("QABRIDGE_API_KEY") or None
