"""The HTTP API: the FastAPI app and its routes over a model registry and the QA service."""

from __future__ import annotations

import asyncio
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from qabridge._version import __version__
from qabridge.errors import BatchTooLarge

from . import http_errors, middleware
from .adapters import AdapterEncoder
from .batching import WindowBatcher
from .config import ServeConfig
from .registry import LoadedModel, ModelRegistry
from .schemas import (
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    HealthResponse,
    ModelInfo,
    ModelList,
    QARequest,
    QAResponse,
)
from .service import QAService
from .ui import mount_ui

_ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 404, 413, 415, 422, 429, 503, 504)}


def create_app(cfg: ServeConfig, *, registry: ModelRegistry | None = None, load_in_background: bool = True) -> FastAPI:
    reg = registry or ModelRegistry(cfg)
    service = QAService(reg, cfg)
    inflight = [0]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if reg.state == "loading":
            if load_in_background:
                threading.Thread(target=reg.load, name="qabridge-load", daemon=True).start()
            else:
                reg.load()
        yield
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, service.close)
        await loop.run_in_executor(None, reg.close)

    app = FastAPI(
        title="qabridge",
        version=__version__,
        description="Extractive question answering: BERT encoder in llama.cpp, span head in Python.",
        lifespan=lifespan,
        responses=_ERRORS,
        docs_url=None,
        redoc_url=None,
    )
    app.state.registry = reg
    app.state.service = service
    middleware.install(app, cfg, inflight, service)
    http_errors.install(app)
    mount_ui(app, cfg)

    @app.post("/api/qa", response_model=QAResponse, summary="Answer one question from a context")
    async def qa(req: QARequest) -> Response:
        # Serialised here: returned as a model, FastAPI would validate it against QAResponse again.
        return Response((await service.answer(req)).model_dump_json(), media_type="application/json")

    @app.post("/api/qa/batch", response_model=BatchResponse, summary="Answer several questions; errors in place")
    async def qa_batch(req: BatchRequest) -> JSONResponse:
        if len(req.qa_pairs) > cfg.max_batch:
            raise BatchTooLarge(f"{len(req.qa_pairs)} items; the batch limit is {cfg.max_batch}")
        return JSONResponse({"results": await service.batch(req.qa_pairs)})

    @app.get("/api/health", response_model=HealthResponse, summary="Liveness and readiness (reads state, loads nothing)")
    async def health() -> HealthResponse:
        ready = reg.ready
        ollama = None
        if reg.watch is not None:
            ollama = {"host": reg.ollama.host, "up": reg.watch.up, "version": reg.watch.version,
                      "pending_models": list(reg.pending_ollama)}
        return HealthResponse(
            status=reg.status(), ready=ready,
            engine=reg.models[reg.default].engine.name if ready else None,
            model=reg.default, models={k: f"{m.engine.name} ({m.source})" for k, m in reg.models.items()},
            ollama=ollama, error=reg.error, inflight=inflight[0],
            engine_choice=reg.engine_choice.summary() if reg.engine_choice else None,
            embedding_cache=reg.retriever.cache.stats() if reg.retriever else None,
        )

    def info_of(m: LoadedModel) -> ModelInfo:
        choice = reg.engine_choices.get(m.name) if m.source == "file" else None
        return model_info(m, choice.summary() if choice else None)

    @app.get("/api/models", response_model=ModelList, summary="Models this bridge can serve")
    async def models() -> ModelList:
        return ModelList(default=reg.default, models=[info_of(m) for m in list(reg.models.values())])

    @app.get("/api/model/info", response_model=ModelInfo, summary="Metadata of a model (default: the bridge's default)")
    async def info(model: str | None = None) -> ModelInfo:
        return info_of(reg.pick(model))

    return app


def model_info(m: LoadedModel, engine_choice: dict | None = None) -> ModelInfo:
    meta = m.file.qabridge_metadata()
    return ModelInfo(
        name=m.name, file=str(m.file.path), size=m.file.path.stat().st_size, sha256=m.sha256,
        quantization=m.file.outtype, base_model=m.file.base_model, layers=m.file.num_layers, max_seq_len=m.file.window_spec.max_seq_len, doc_stride=m.file.window_spec.doc_stride,
        engine=m.engine.name, device=getattr(m.engine, "device", "cpu"),
        batching=m.engine.stats() if isinstance(m.engine, WindowBatcher) else None, source=m.source, adapter_of=str(m.engine.base_path) if isinstance(m.engine, AdapterEncoder) else None,
        abstention=m.file.abstention, engine_choice=engine_choice, metadata={k: _jsonable(v) for k, v in meta.items()},
    )


def _jsonable(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)
