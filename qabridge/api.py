"""The Python API: what ``transformers.pipeline("question-answering")`` gave, on llama.cpp or ONNX Runtime.

    from qabridge import pipeline

    with pipeline() as qa:                      # the default model; or a GGUF/ONNX path, or "ollama:bert-qa"
        qa(question="Who wrote it?", context="It was written by Ada.")
        # {'score': 0.93, 'start': 22, 'end': 25, 'answer': 'Ada'}

The call shape and the result shape are the transformers pipeline's (``question=``/``context=``,
lists of them, dicts with ``question``/``context``, ``top_k``, ``doc_stride``, ``max_answer_len``,
``max_seq_len``, ``max_question_len``, ``handle_impossible_answer``; ``null_threshold`` moves
the abstention decision, default the model's tuned threshold if it stores one). Two differences, both on
purpose: ``top_k`` lists distinct spans (the transformers pipeline can repeat a span found in two
overlapping windows), and ``max_answer_len`` defaults to the model's (30 tokens for qabridge's
models; transformers defaults to 15). Offsets are those of the tokens, like the transformers
pipeline with ``align_to_words=False``; the HTTP bridge answers with the same spans.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from qabridge.core.decode import null_log_ratio, null_rank
from qabridge.core.model_file import ModelFile
from qabridge.core.pipeline import QAPipeline
from qabridge.errors import MissingContext, ModelError, SequenceTooLong, UsageError

TASK = "question-answering"
OLLAMA_PREFIX = "ollama:"
#: ``engine=``: as ``qabridge serve --engine``.
ENGINES = ("auto", "llama.cpp", "onnx", "openvino")

Answer = dict[str, Any]


def _default_ollama_host() -> str:
    return os.environ.get("OLLAMA_HOST") or "http://127.0.0.1:11434"


def resolve_model(model: str | os.PathLike | None, *, ollama_host: str | None = None,
                  outtype: str = "auto") -> tuple[Path, str, str]:
    """``(gguf_path, name, source)`` for a model argument.

    ``None``: the built-in default model (built once from the shipped adapter, cached); a built-in
    model's name (``qabridge.core.builtin``, e.g. ``bert-qa``): that one, unless a file has the name.
    An existing file: that GGUF. ``ollama:NAME`` (or another bare name that is no file): the GGUF
    blob that Ollama holds for NAME (the process must run on the machine that holds Ollama's models).
    """
    builtin = _builtin(model)
    if builtin is not None:
        from qabridge.export.run import default_model

        return default_model(outtype, adapter=builtin.adapter()), builtin.name, "file"
    text = os.fspath(model)
    path = Path(text)
    if not text.startswith(OLLAMA_PREFIX) and (path.exists() or path.suffix in (".gguf", ".onnx") or os.sep in text):
        if not path.exists():
            raise ModelError(f"{path}: no such model file")
        from qabridge.bridge.registry import model_name

        return path, model_name(path), "file"
    name = text.removeprefix(OLLAMA_PREFIX)
    from qabridge.bridge.ollama import OllamaClient

    client = OllamaClient(ollama_host or _default_ollama_host())
    try:
        return client.show(name).blob, name, "ollama"
    finally:
        client.close()


def _builtin(model: str | os.PathLike | None):
    """The built-in model ``model`` names (None: the default), never for an ``ollama:`` name."""
    from qabridge.core.builtin import lookup_builtin

    if model is not None and os.fspath(model).startswith(OLLAMA_PREFIX):
        return None
    return lookup_builtin(model)


class QuestionAnsweringPipeline:
    """Extractive QA over one qabridge model file: tokenizer and span head from its metadata, the
    encoder in llama.cpp (GGUF) or ONNX Runtime (``.onnx`` from ``qabridge export --format onnx``).

    Thread-safe; ``close()`` (or a ``with`` block) frees the engine's memory.
    """

    task = TASK

    def __init__(self, model: str | os.PathLike | None = None, *, ollama_host: str | None = None,
                 threads: int | None = None, contexts: int = 1, flash_attn: bool = True, outtype: str = "auto",
                 engine: str = "auto", adapter: str | os.PathLike | None = None):
        if engine not in ENGINES:
            raise UsageError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
        #: How a built-in model's engine was chosen (as ``qabridge serve`` does), else None.
        self.engine_choice = None
        self._base = None
        builtin = _builtin(model)
        if adapter is not None:
            self._load_adapter(model, builtin, adapter, threads=threads, contexts=contexts, flash_attn=flash_attn,
                               outtype=outtype, engine=engine)
            return
        if builtin is not None and engine in ("onnx", "openvino") and outtype != "auto":
            raise UsageError(f"engine={engine!r} has no outtype {outtype!r} (an outtype names a GGUF)")
        if builtin is not None and engine != "llama.cpp" and outtype == "auto":
            from qabridge.bridge.engine_select import choose_default

            self.engine_choice = choose_default(engine, adapter=builtin.adapter(), n_threads=threads)
            path, self.name, self.source = Path(self.engine_choice.path), builtin.name, "file"
        else:
            path, self.name, self.source = resolve_model(model, ollama_host=ollama_host, outtype=outtype)
        from qabridge.bridge.engine_select import engine_for

        if engine != "auto" and engine_for(path) != engine:
            raise UsageError(f"engine={engine!r} cannot serve {path.name}")
        if path.suffix == ".xml":
            from qabridge.bridge.openvino_engine import OpenVinoEngine

            # Its multi-stream compilation even for one caller: a long document's windows spread over it.
            self._engine = OpenVinoEngine(path, n_threads=threads, n_contexts=max(2, contexts))
            self.model_file = self._engine.file
            self._max_tokens = self._engine.n_positions
        elif path.suffix == ".onnx":
            from qabridge.bridge.onnx_engine import OnnxEngine

            # contexts > 1: a narrow ONNX Runtime session beside the wide one for concurrent calls.
            self._engine = OnnxEngine(path, n_threads=threads, n_contexts=contexts)
            self.model_file = self._engine.file
            self._max_tokens = self._engine.n_positions
        else:
            from qabridge.bridge.llama_engine import LlamaCppEngine

            self.model_file = ModelFile(path)
            self._engine = LlamaCppEngine(self.model_file, n_threads=threads, flash_attn=flash_attn, n_contexts=contexts)
            self._max_tokens = self._engine.n_ctx
        self._slots = threading.BoundedSemaphore(max(1, contexts))
        self._qa = QAPipeline(self.model_file.tokenizer, self._engine, self.model_file.window_spec,
                              max_answer_len=self.model_file.max_answer_len)

    def _load_adapter(self, model, builtin, adapter, *, threads, contexts, flash_attn, outtype, engine) -> None:
        """``adapter=``: a LoRA adapter applied at run time over one copy of ``model``'s base, in
        llama.cpp or OpenVINO (``engine=``; auto over a built-in model: the faster of them as its
        measured candidates say, as ``qabridge serve --adapter`` does)."""
        from qabridge.bridge.adapters import AdapterSpec, check_bases, load_adapters

        if engine == "onnx":
            raise UsageError("adapter= runs in llama.cpp or OpenVINO (runtime LoRA); engine='onnx' cannot apply it")
        spec = AdapterSpec.parse(os.fspath(adapter))
        served = None
        if builtin is not None:
            served = AdapterSpec(builtin.name, builtin.adapter()).base_name()
        elif model is not None and Path(model).suffix == ".gguf":
            served = ModelFile(model).base_model
        base = check_bases([spec], served)
        if builtin is not None and engine == "auto" and outtype == "auto":
            # As `serve` does: the faster runtime-LoRA engine of the built-in model's measured candidates.
            from qabridge.bridge.adapters import adapter_engine
            from qabridge.bridge.engine_select import choose_default

            self.engine_choice = choose_default(adapter=builtin.adapter(), n_threads=threads)
            engine, outtype = adapter_engine(self.engine_choice)
        self._base, loaded = load_adapters([spec], base, outtype=outtype, n_threads=threads, flash_attn=flash_attn,
                                           n_contexts=contexts, engine=engine)
        self.name, enc, self._qa, _ = loaded[0]
        self.source, self._engine, self.model_file, self._max_tokens = "adapter", enc, enc.file, enc.n_ctx
        self._slots = threading.BoundedSemaphore(max(1, contexts))

    # -- the transformers call shape ----------------------------------------------------------
    def __call__(self, *args, **kwargs) -> Answer | list[Answer] | list[Answer | list[Answer]]:
        items, single = self._inputs(args, kwargs)
        opts = self._options(kwargs)
        results = [self._answer(q, c, **opts) for q, c in items]
        return results[0] if single else results

    def _inputs(self, args: tuple, kwargs: dict) -> tuple[list[tuple[str, str]], bool]:
        question, context = kwargs.pop("question", None), kwargs.pop("context", None)
        if args:
            if len(args) == 2 and question is None and context is None:
                question, context = args
            elif len(args) == 1:
                return self._from_dicts(args[0])
            else:
                raise UsageError("give question= and context=, or a dict / list of dicts with both")
        if question is None or context is None:
            raise MissingContext("give both question= and context=")
        if isinstance(question, str) and isinstance(context, str):
            return [(question, context)], True
        qs = [question] if isinstance(question, str) else list(question)
        cs = [context] if isinstance(context, str) else list(context)
        if len(qs) == 1 and len(cs) > 1:
            qs = qs * len(cs)
        if len(cs) == 1 and len(qs) > 1:
            cs = cs * len(qs)
        if len(qs) != len(cs):
            raise UsageError(f"{len(qs)} questions and {len(cs)} contexts: give one context per question")
        return list(zip(qs, cs)), False

    @staticmethod
    def _from_dicts(x: Mapping | Iterable[Mapping]) -> tuple[list[tuple[str, str]], bool]:
        one = isinstance(x, Mapping)
        out = []
        for d in [x] if one else list(x):
            if not isinstance(d, Mapping) or "question" not in d or "context" not in d:
                raise UsageError("each input needs 'question' and 'context'")
            out.append((d["question"], d["context"]))
        return out, one

    def _options(self, kw: dict) -> dict:
        known = {"top_k", "doc_stride", "max_answer_len", "max_seq_len", "max_question_len", "handle_impossible_answer",
                 "null_threshold"}
        unknown = set(kw) - known
        if unknown:
            raise UsageError(f"unknown argument(s): {', '.join(sorted(unknown))}")
        top_k = int(kw.get("top_k", 1))
        if top_k < 1:
            raise UsageError(f"top_k must be >= 1, got {top_k}")
        spec = self._qa.spec
        over = {k: int(kw[a]) for k, a in (("max_seq_len", "max_seq_len"), ("doc_stride", "doc_stride"),
                                            ("max_question_tokens", "max_question_len")) if kw.get(a) is not None}
        if over:
            spec = dataclasses.replace(spec, **over)
            if spec.max_seq_len > self._max_tokens:
                raise SequenceTooLong(f"max_seq_len {spec.max_seq_len} exceeds the model's window ({self._max_tokens})")
        mal = kw.get("max_answer_len")
        if mal is not None and int(mal) < 1:
            raise UsageError(f"max_answer_len must be >= 1, got {mal}")
        return {"top_k": top_k, "spec": spec, "max_answer_len": int(mal) if mal is not None else None,
                "impossible": bool(kw.get("handle_impossible_answer", False)),
                "threshold": float(kw["null_threshold"]) if kw.get("null_threshold") is not None
                else self.model_file.abstention["default_threshold"]}

    def _answer(self, question: str, context: str, *, top_k: int, spec, max_answer_len: int | None,
                impossible: bool, threshold: float) -> Answer | list[Answer]:
        if not isinstance(question, str) or not isinstance(context, str):
            raise UsageError("question and context must be strings")
        # As the bridge does: a waiting call counts as demand (the engine then splits its threads, the
        # narrow ONNX session), and at most ``contexts`` calls encode at once.
        with self._engine.demand(), self._slots:
            pred = self._qa.predict(question, context, top_k=top_k, max_answer_len=max_answer_len, spec=spec)
        answers = [{"score": s.score, "start": s.start, "end": s.end, "answer": context[s.start : s.end]} for s in pred.spans]
        if impossible:
            # As the transformers pipeline does, the empty answer competes: it ranks above a span when
            # log p(null) - log p(span) > threshold (0 unless the model stores a tuned one: then it is
            # the transformers rule, p(null) > p(span)).
            pos = null_rank([null_log_ratio(pred.null_score, a["score"]) for a in answers], threshold)
            answers = (answers[:pos] + [{"score": pred.null_score, "start": 0, "end": 0, "answer": ""}] + answers[pos:])[:top_k]
        if not answers:
            answers = [{"score": 0.0, "start": 0, "end": 0, "answer": ""}]
        return answers[0] if top_k == 1 else answers

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        self._engine.close()
        if self._base is not None:
            self._base.close()

    def __enter__(self) -> QuestionAnsweringPipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"QuestionAnsweringPipeline(model={self.name!r}, source={self.source!r}, engine={self._engine.name!r}, "
                f"file={str(self.model_file.path)!r})")


def pipeline(task: str | None = None, model: str | os.PathLike | None = None, **kwargs) -> QuestionAnsweringPipeline:
    """A question-answering pipeline: ``pipeline()``, ``pipeline("question-answering", model=...)``,
    ``pipeline(model="models/bert-qa.q8_0.gguf")``, a built-in model by name (``pipeline("bert-qa")``;
    ``qabridge.core.builtin``) or ``pipeline("ollama:bert-qa")``.

    Keyword arguments: ``ollama_host``, ``threads``, ``contexts`` (requests encoded at once),
    ``flash_attn``, ``engine`` (auto, llama.cpp, onnx) and ``outtype`` (auto, f32, f16, bf16, q8_0)
    of a built-in model: with both "auto", the engine ``qabridge serve`` measures fastest
    on this CPU (cached per CPU and model: ONNX Runtime int8 where it wins and torch can export it);
    an outtype or engine="llama.cpp" gives that GGUF. ``adapter`` (a LoRA adapter directory or a
    LoRA GGUF from ``qabridge export --lora-only``) answers with that adapter applied at run time over
    ``model``'s base (default: bert-qa's), as ``qabridge serve --adapter`` does.
    """
    if task is not None and task != TASK:
        if model is not None:
            raise UsageError(f"qabridge only does {TASK!r}, not {task!r}")
        model = task  # pipeline("models/x.gguf") / pipeline("bert-qa") / pipeline("ollama:bert-qa")
    return QuestionAnsweringPipeline(model, **kwargs)
