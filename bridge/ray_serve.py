"""The bridge on Ray Serve: N replicas of the existing FastAPI app behind a thin retrying ingress.

    qabridge serve --ray --model /shared/bert-qa.q8_0.gguf --replicas 2 --cpus-per-replica 1
    serve run qabridge.bridge.ray_serve:app model=/shared/bert-qa.q8_0.gguf replicas=2

Two deployments:

- ``QAReplica`` mounts the app ``qabridge serve`` runs (``@serve.ingress``, built per replica from
  the ServeConfig) in its own process, the encoder (llama.cpp or ONNX Runtime) in-process, its
  threads sized from the CPUs Ray assigned to the replica, not ``os.cpu_count()``.
- ``QAIngress`` takes every HTTP request and hands it to a replica through a deployment handle.
  Serve does not retry a request that was in flight on a replica that died (measured: HTTP 500);
  QA is idempotent, so the ingress sends it once more, to another replica (the router drops a
  dead replica from its set on the first ActorDiedError).

Every replica loads the model from the same path: on a cluster, a path every node can read (a
shared filesystem); passages for ``documents`` requests are ranked by a local embedding GGUF
(built on the driver, read by the replicas), since Ollama runs per machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from qabridge.errors import ModelError, ModelUnavailable, PayloadTooLarge, ServiceError, UsageError

from .config import ServeConfig
from .ray_runtime import assigned_cpus, init_ray, require_ray, threads_for

require_ray()
from ray import serve  # noqa: E402  (after the check: a missing extra is one clear line)
from ray.exceptions import ActorUnavailableError, RayActorError  # noqa: E402

log = logging.getLogger("qabridge.ray")

APP_NAME = "qabridge"
#: Response header naming the replica that answered (``<replica id>@<pid>``): which process served.
REPLICA_HEADER = "x-qabridge-replica"
#: Response header set when the ingress had to resend the request to another replica.
RETRIED_HEADER = "x-qabridge-retried"
# Hop-by-hop headers the ingress must not copy to the replica.
_DROP = {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"content-length"}


@dataclass
class RayServeOptions:
    """How many replicas and how big: fixed ``replicas`` or ``autoscale`` (min, max)."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    cpus_per_replica: float = 1.0
    #: Resends of a request whose replica died (0: none, as Serve alone does).
    retries: int = 1
    #: Engine threads / contexts per replica; None: from the replica's assigned CPUs.
    threads: int | None = None
    contexts: int | None = None

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise UsageError(f"--replicas must be >= 1, got {self.replicas}")
        if self.cpus_per_replica <= 0:
            raise UsageError(f"--cpus-per-replica must be > 0, got {self.cpus_per_replica:g}")
        if self.autoscale is not None:
            lo, hi = self.autoscale
            if lo < 1 or hi < lo:
                raise UsageError(f"--autoscale MIN:MAX needs 1 <= MIN <= MAX, got {lo}:{hi}")

    @property
    def per_replica_threads(self) -> int:
        return self.threads or threads_for(self.cpus_per_replica)

    @property
    def max_ongoing(self) -> int:
        # Requests a replica accepts at once: enough to keep each context busy with one queued behind.
        return max(4, 2 * (self.contexts or min(4, self.per_replica_threads)))


def parse_autoscale(text: str | None) -> tuple[int, int] | None:
    """``"1:4"`` -> (1, 4)."""
    if not text:
        return None
    try:
        lo, hi = (int(x) for x in text.split(":"))
    except ValueError:
        raise UsageError(f"--autoscale takes MIN:MAX (e.g. 1:4), got {text!r}") from None
    return lo, hi


# -- the replica ------------------------------------------------------------------------------------
def replica_config(cfg: ServeConfig, threads: int, contexts: int | None) -> ServeConfig:
    """The config a replica runs: its own thread budget, nothing built or measured per replica."""
    return dataclasses.replace(cfg, n_threads=threads, n_contexts=contexts or min(4, threads), builtin_model=None,
                               default_embedder=False)


@serve.ingress()
class QAReplica:
    """One process with the bridge app and its engine; also answers forwarded requests from QAIngress."""

    def __init__(self, cfg: ServeConfig, threads: int | None = None, contexts: int | None = None):
        from .registry import ModelRegistry
        from .server import build_app

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        self.threads = threads or threads_for(assigned_cpus())
        self.cfg = replica_config(cfg, self.threads, contexts)
        # Loaded here, before the replica counts as started: a replica that cannot load fails its
        # start (Serve reports the deployment failed) instead of answering 503 forever, and a
        # rolling update only routes to replicas whose model is in memory.
        self.registry = ModelRegistry(self.cfg)
        self.registry.load()
        if not self.registry.ready:
            self.registry.close()
            raise ModelUnavailable(f"replica could not load its model: {self.registry.error}")
        self.qa_app = build_app(self.cfg, registry=self.registry)
        ctx = serve.get_replica_context()
        self.ident = f"{ctx.replica_id.unique_id}@{os.getpid()}"
        log.info("replica %s: %s, %d threads, %d contexts", self.ident, self.cfg.model_path, self.threads,
                 self.cfg.n_contexts)

    def __serve_build_asgi_app__(self):
        return self.qa_app

    def check_health(self) -> None:
        """Serve restarts a replica whose check raises."""
        if not self.registry.ready:
            raise ModelUnavailable(f"model not ready: {self.registry.status()}")

    def info(self) -> dict:
        return {"replica": self.ident, "pid": os.getpid(), "threads": self.threads,
                "contexts": self.cfg.n_contexts, "model": str(self.cfg.model_path)}

    async def forward(self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]],
                      body: bytes, client: tuple[str, int] | None = None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Run one HTTP request through this replica's app, in-process: what QAIngress sends."""
        status, out, chunks = 500, [], []
        delivered = False
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": query,
                 "headers": [*headers, (b"content-length", str(len(body)).encode())], "client": client,
                 "server": ("127.0.0.1", 0)}

        async def receive():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client stays connected until the response is sent

        async def send(msg):
            nonlocal status, out
            if msg["type"] == "http.response.start":
                status, out = msg["status"], list(msg.get("headers", []))
            elif msg["type"] == "http.response.body":
                chunks.append(msg.get("body", b""))

        await self.qa_app(scope, receive, send)
        return status, [*out, (REPLICA_HEADER.encode(), self.ident.encode())], b"".join(chunks)


# -- the ingress ------------------------------------------------------------------------------------
class QAIngress:
    """Every HTTP request to a replica; once more to another replica when the first one died.

    A plain ``__call__(request)`` deployment, not a second ``@serve.ingress``: Serve allows one
    FastAPI/ASGI deployment per application, and that one is the replica's mounted app."""

    def __init__(self, replica, retries: int = 1, max_body_bytes: int = 2_000_000):
        self.replica = replica
        self.retries = retries
        self.max_body_bytes = max_body_bytes

    async def __call__(self, request: Request) -> Response:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_body_bytes:  # the replica would refuse it too; don't ship it there
                err = PayloadTooLarge(f"request body over {self.max_body_bytes} bytes")
                return JSONResponse(err.to_dict(), status_code=err.status)
        headers = [(k, v) for k, v in request.scope["headers"] if k not in _DROP]
        client = tuple(request.scope["client"]) if request.scope.get("client") else None
        for attempt in range(self.retries + 1):
            try:
                status, out, content = await self.replica.forward.remote(
                    request.method, request.url.path, request.scope.get("query_string", b""), headers, bytes(body), client)
                break
            except (RayActorError, ActorUnavailableError) as exc:
                log.warning("replica died under a request (attempt %d of %d): %s", attempt + 1, self.retries + 1,
                            exc.__class__.__name__)
                if attempt == self.retries:
                    err = ServiceError("the replica answering this request died; try again")
                    return JSONResponse(err.to_dict(), status_code=err.status, headers={"Retry-After": "1"})
        resp = Response(content=content, status_code=status)
        resp.raw_headers = [*out, *([(RETRIED_HEADER.encode(), str(attempt).encode())] if attempt else [])]
        return resp


# -- building and running the application ----------------------------------------------------------
def prepare_config(cfg: ServeConfig, log_fn: Callable[[str], None] | None = None) -> ServeConfig:
    """Resolve on the driver what every replica must read from the same place: the model file and
    the embedding GGUF for ranking (built once here, not by each replica at once)."""
    if cfg.ollama_models or cfg.embedding_model:
        raise UsageError("--ray serves model files; Ollama runs per machine: pass --model FILE (and --embedding-gguf)")
    path = cfg.model_path
    if path is None:
        from qabridge.core.builtin import lookup_builtin
        from qabridge.export.run import default_model

        outtype = "q8_0" if cfg.default_outtype == "auto" else cfg.default_outtype
        path = default_model(outtype, adapter=lookup_builtin(cfg.builtin_model).adapter(), log=log_fn)
    path = Path(path).resolve()
    if not path.is_file():
        raise ModelError(f"{path}: no such model file (with --ray it must be readable at this path on every node)")
    emb = Path(cfg.embedding_gguf).resolve() if cfg.embedding_gguf else None
    if emb is None and cfg.default_embedder:
        from qabridge.export.run import default_embedder

        try:
            emb = default_embedder(log=log_fn)
        except ModelError as exc:  # no offline base: replicas rank with the QA model's own states
            if log_fn:
                log_fn(f"no local embedder ({exc.message}); documents are ranked with the QA model")
    return dataclasses.replace(cfg, model_path=path, embedding_gguf=emb, builtin_model=None, default_embedder=False,
                               engine="onnx" if path.suffix == ".onnx" else "llama.cpp")


def build(cfg: ServeConfig, opts: RayServeOptions):
    """The Serve application: QAIngress over QAReplica (or QAReplica alone with ``retries=0``)."""
    replica_opts = {"ray_actor_options": {"num_cpus": opts.cpus_per_replica}, "max_ongoing_requests": opts.max_ongoing,
                    "health_check_period_s": 5, "graceful_shutdown_timeout_s": cfg.request_timeout_s}
    if opts.autoscale:
        lo, hi = opts.autoscale
        replica_opts["autoscaling_config"] = {"min_replicas": lo, "max_replicas": hi, "initial_replicas": lo,
                                              "target_ongoing_requests": max(1, opts.max_ongoing // 2)}
    else:
        replica_opts["num_replicas"] = opts.replicas
    replica = serve.deployment(QAReplica, name="QAReplica").options(**replica_opts).bind(cfg, opts.threads, opts.contexts)
    if opts.retries <= 0:
        return replica
    # The ingress only copies bytes: no CPU reserved, so replicas get every core the cluster has.
    ingress = serve.deployment(QAIngress, name="QAIngress").options(
        ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000, num_replicas=1)
    return ingress.bind(replica, opts.retries, cfg.max_body_bytes)


def deploy(cfg: ServeConfig, opts: RayServeOptions, *, route_prefix: str = "/"):
    """(Re)deploy the application on the connected cluster and wait until it runs. Deploying again
    with another config is a rolling update: Serve replaces the replicas a few at a time."""
    try:
        return serve.run(build(cfg, opts), name=APP_NAME, route_prefix=route_prefix)
    except RuntimeError as exc:  # DEPLOY_FAILED: the replicas' own error is in the message
        raise ServiceError(f"Ray Serve could not deploy qabridge: {str(exc).strip().splitlines()[-1][:500]}") from None


def serve_on_ray(cfg: ServeConfig, opts: RayServeOptions, *, host: str, port: int, address: str | None = None,
                 log_fn: Callable[[str], None] = print) -> None:
    """``qabridge serve --ray``: start (or join) Ray, deploy, block until SIGINT/SIGTERM, tear down."""
    import ray

    cfg = prepare_config(cfg, log_fn)
    started = init_ray(address, log_fn=log_fn)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        deploy(cfg, opts)
        what = f"autoscaling {opts.autoscale[0]}-{opts.autoscale[1]}" if opts.autoscale else str(opts.replicas)
        log_fn(f"serving {cfg.model_path} on http://{host}:{port}: {what} replica(s), "
               f"{opts.cpus_per_replica:g} CPU and {opts.per_replica_threads} thread(s) each")
        stop.wait()
    finally:
        try:
            serve.delete(APP_NAME)
            if started:
                serve.shutdown()
        finally:
            if started:
                ray.shutdown()


def app(args: dict[str, str] | None = None):
    """Builder for ``serve run qabridge.bridge.ray_serve:app key=value ...`` (or a Serve config file's
    ``import_path``). Keys, each also read from ``QABRIDGE_RAY_<KEY>``: model (a GGUF or ONNX path every
    node can read; default: the built-in model), embedding_gguf, replicas, autoscale (MIN:MAX),
    cpus_per_replica, retries, threads, contexts, timeout."""
    args = dict(args or {})

    def get(key: str, default=None):
        return args.get(key, os.environ.get(f"QABRIDGE_RAY_{key.upper()}", default))

    try:
        opts = RayServeOptions(replicas=int(get("replicas", 1)), autoscale=parse_autoscale(get("autoscale")),
                               cpus_per_replica=float(get("cpus_per_replica", 1)), retries=int(get("retries", 1)),
                               threads=int(get("threads")) if get("threads") else None,
                               contexts=int(get("contexts")) if get("contexts") else None)
        timeout = float(get("timeout", 120))
    except ValueError as exc:
        raise UsageError(f"qabridge.bridge.ray_serve:app: bad argument ({exc})") from None
    from .config import env_api_key

    model, emb = get("model"), get("embedding_gguf")
    cfg = ServeConfig(model_path=Path(model) if model else None, embedding_gguf=Path(emb) if emb else None,
                      request_timeout_s=timeout, api_key=env_api_key())
    return build(prepare_config(cfg, log.info), opts)
