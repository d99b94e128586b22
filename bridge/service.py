"""Answering: request checks, one question over a context or over documents, deadlines, batches."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from pydantic import ValidationError

from qabridge.core.decode import Span, distinct_top, null_log_ratio, null_rank
from qabridge.errors import (
    ContextTooLong,
    EmptyContext,
    EmptyQuestion,
    InvalidUnicode,
    MissingContext,
    QABridgeError,
    Timeout,
    TooManyDocuments,
    UsageError,
)

from .config import ServeConfig
from .http_errors import as_error_dict
from .registry import LoadedModel, ModelRegistry
from .schemas import AnswerItem, QARequest, QAResponse, RankedPassage

log = logging.getLogger("qabridge.bridge")

#: With documents: read every passage when there are at most this many, else the best TOP_PASSAGES.
READ_ALL_PASSAGES = 8
TOP_PASSAGES = 5
#: With documents, a span's rank = its margin over its passage's no-answer logit + this x the
#: passage's cosine similarity to the question (retriever and reader interpolated, as in BERTserini).
#: Tuned on SQuAD v1.1 dev articles 2-11 (30 paragraphs, 20 questions each: 133/200 answered at 0,
#: 138-140 from 6 to 24, 140 at 20), with the default embedder (the base, mean-pooled); the first
#: article is the issue's report set (benchmarks/experiments/documents_eval.py, docs/quality.md).
PASSAGE_WEIGHT = 20.0
#: With documents and handle_impossible_answer, the null answer ranks as a span with margin
#: -null_threshold in a passage of this similarity: it wins when no passage is both on topic and
#: answered. At weight 20 (null rank 20 at threshold 0), SQuAD dev articles 2-11 with 20 questions
#: of another article asked over each: 135/200 answerable still answered (as without abstaining),
#: 186/200 off-topic abstained; the rank cut at 26 started to lose answerable ones (128/200).
NULL_SIMILARITY = 1.0


#: A request alone with a context up to this long (about three windows) is answered on the event
#: loop's thread: one client asking 1000 SQuAD dev paragraphs took 8.01 ms a request against 8.41-8.56
#: through a worker thread (two servers taking turns, 2-core Intel Xeon with AMX, OpenVINO bf16).
#: The loop then waits for it, so only when nothing else is in flight and only for a few windows.
INLINE_CHARS = 4000


class QAService:
    """Runs requests on worker threads that call into the engine, one deadline per request."""

    def __init__(self, registry: ModelRegistry, cfg: ServeConfig):
        self.registry = registry
        self.cfg = cfg
        from .batching import BATCH_WORKERS

        # With batching, many requests wait in the batcher's queue at once; without, each worker is
        # a request inside the engine, so the engine's own concurrency bounds them.
        workers = max(cfg.n_contexts, BATCH_WORKERS) if cfg.batch_requests else cfg.n_contexts
        self.executor = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="qabridge-engine")

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    # -- checks -------------------------------------------------------------------------------
    def check(self, req: QARequest) -> None:
        if req.context is None and not req.documents:
            raise MissingContext("give a context (or documents)")
        if req.context is not None and req.documents:
            raise UsageError("give either context or documents, not both")
        texts = [req.question] + ([req.context] if req.context is not None else list(req.documents or []))
        for t in texts:
            try:
                t.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidUnicode("text is not valid Unicode (lone surrogate)") from None
        if not req.question.strip():
            raise EmptyQuestion("question is empty")
        if req.context is not None and not req.context.strip():
            raise EmptyContext("context is empty")
        total = len(req.context) if req.context is not None else sum(len(d) for d in req.documents or [])
        if total > self.cfg.max_context_chars:
            raise ContextTooLong(f"context is {total} characters; the limit is {self.cfg.max_context_chars}")
        if req.documents and len(req.documents) > self.cfg.max_documents:
            raise TooManyDocuments(f"{len(req.documents)} documents; the limit is {self.cfg.max_documents}")

    # -- answering (worker threads) -----------------------------------------------------------
    def answer_sync(self, req: QARequest, deadline: float | None = None) -> QAResponse:
        m = self.registry.pick(req.model)
        if req.context is None:
            return self._answer_documents(m, req, deadline)
        pred = m.pipeline.predict(req.question, req.context, top_k=req.top_k, max_answer_len=req.max_answer_len,
                                  deadline=deadline)
        items = [AnswerItem(answer=req.context[s.start : s.end], score=s.score, start=s.start, end=s.end) for s in pred.spans]
        return _response(items, m, pred.n_windows, {k: round(v, 3) for k, v in pred.timing_ms.items()},
                         null=pred.null_score, req=req)

    def _answer_documents(self, m: LoadedModel, req: QARequest, deadline: float | None = None) -> QAResponse:
        """Rank passages, read the best (all of them when they fit), keep the spans with the best margin
        over their passage's no-answer probability plus ``passage_weight`` x the passage's similarity
        to the question: a span's probability is normalised within its window, so only the margin over
        [CLS] compares across passages, and the retriever's view breaks what the reader cannot."""
        docs = list(req.documents or [])
        t0 = time.perf_counter()
        ranked, used = self.registry.retriever.rank(req.question, docs)
        t1 = time.perf_counter()
        n_read = req.top_documents or (len(ranked) if len(ranked) <= READ_ALL_PASSAGES else TOP_PASSAGES)
        cands: list[tuple[Span, int, float]] = []  # span, document, rank (margin over [CLS] + weight x similarity)
        windows = 0
        null = 1.0
        for passage, sim in ranked[:n_read]:
            text = docs[passage.document][passage.start : passage.end]
            try:
                pred = m.pipeline.predict(req.question, text, top_k=req.top_k, max_answer_len=req.max_answer_len,
                                          deadline=deadline)
            except EmptyContext:
                continue  # a passage with no tokens
            windows += pred.n_windows
            null = min(null, pred.null_score)
            for sp in pred.spans:
                rank = -null_log_ratio(pred.null_score, sp.score) + self.cfg.passage_weight * sim
                cands.append((Span(sp.score, sp.start + passage.start, sp.end + passage.start, sp.window), passage.document, rank))
        t2 = time.perf_counter()
        top = distinct_top(cands, key=lambda c: (c[1], c[0].start, c[0].end), score=lambda c: c[2], top_k=req.top_k)
        items = [AnswerItem(answer=docs[d][sp.start : sp.end], score=sp.score, start=sp.start, end=sp.end, document=d)
                 for sp, d, _ in top]
        return _response(
            items, m, windows, {"rank": round(1e3 * (t1 - t0), 3), "read": round(1e3 * (t2 - t1), 3)},
            # null_rank abstains where ratio > threshold: here, where a span ranks below the null's
            # passage_weight x NULL_SIMILARITY - threshold (with weight 0: the reader's rule). The
            # threshold: the request's, else the model's documents cut (at its weight), else its single-text one.
            null=null, req=req, ratios=[self.cfg.passage_weight * NULL_SIMILARITY - c[2] for c in top],
            default_threshold=m.file.documents_threshold(self.cfg.passage_weight),
            ranking=[RankedPassage(document=p.document, start=p.start, end=p.end, similarity=round(sim, 6))
                     for p, sim in ranked[:n_read]],
            embedder=used,
        )

    # -- answering (event loop) ---------------------------------------------------------------
    async def answer(self, req: QARequest, alone: bool = False) -> QAResponse:
        """``alone``: no other request is in flight; a short one is then answered on the event loop's
        own thread, without the two thread hand-offs (a worker's wake-up, the loop's)."""
        self.check(req)
        m = self.registry.pick(req.model)
        timeout = self.cfg.request_timeout_s
        deadline = time.monotonic() + timeout
        if alone and req.context is not None and len(req.context) <= INLINE_CHARS and not self.cfg.batch_requests:
            with m.engine.demand():
                return self.answer_sync(req, deadline)
        loop = asyncio.get_running_loop()
        # Queued requests count as demand, so the engine splits its threads before they reach it.
        with m.engine.demand():
            fut = loop.run_in_executor(self.executor, self.answer_sync, req, deadline)
            # After a 504 the worker still finishes (or stops at the deadline); retrieve its outcome quietly.
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            try:
                return await asyncio.wait_for(asyncio.shield(fut), timeout=timeout)
            except asyncio.TimeoutError:
                raise Timeout(f"request took longer than {timeout:g} s") from None

    async def batch(self, items: list[dict]) -> list[dict]:
        """Each item validated and answered on its own; a failed item gets its error in place."""

        async def one(item: dict) -> dict:
            try:
                return (await self.answer(QARequest.model_validate(item))).model_dump()
            except (QABridgeError, ValidationError) as exc:
                return as_error_dict(exc)
            except Exception as exc:
                log.exception("batch item failed")
                return as_error_dict(exc)

        return list(await asyncio.gather(*(one(i) for i in items)))


def _response(items: list[AnswerItem], m: LoadedModel, n_windows: int, timing: dict, *, null: float,
              req: QARequest, ratios: list[float] | None = None, default_threshold: float | None = None,
              **extra) -> QAResponse:
    """The response; with ``handle_impossible_answer`` the null answer takes its place in the ranking
    (decode.null_rank). ``ratios``: each item's null_log_ratio when the caller computed them per
    passage; else against ``null``."""
    threshold = None
    abstained = False
    if req.handle_impossible_answer:
        if req.null_threshold is not None:
            threshold = req.null_threshold
        else:
            threshold = default_threshold if default_threshold is not None else m.file.abstention["default_threshold"]
        null_item = AnswerItem(answer=None, score=null, start=None, end=None)
        pos = null_rank(ratios if ratios is not None else [null_log_ratio(null, it.score) for it in items], threshold)
        abstained = pos == 0
        items = (items[:pos] + [null_item] + items[pos:])[: max(req.top_k, 1)]
    best = items[0] if items else AnswerItem(answer="", score=0.0, start=0, end=0)
    return QAResponse(
        answer=best.answer, score=best.score, start=best.start, end=best.end, document=best.document,
        no_answer_probability=null, abstained=abstained, null_threshold=threshold,
        answers=items, model=m.name, engine=m.engine.name, windows=n_windows, timing_ms=timing, **extra,
    )
