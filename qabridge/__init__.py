"""qabridge: extractive QA with BERT-family encoders, trained with LoRA, served by llama.cpp/Ollama.

    from qabridge import pipeline, Client

``pipeline`` answers in-process (llama.cpp); ``Client``/``AsyncClient`` talk to a running bridge.
Every failure is a :class:`QABridgeError` subclass (see :mod:`qabridge.errors`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qabridge._version import __version__
from qabridge.errors import (
    BatchTooLarge,
    ConnectError,
    ContextTooLong,
    DataError,
    EmbeddingsUnavailable,
    EmptyContext,
    EmptyQuestion,
    EngineError,
    EngineUnavailable,
    InvalidField,
    InvalidJSON,
    MissingContext,
    ModelError,
    ModelLoading,
    ModelNotFound,
    ModelUnavailable,
    OllamaResponseError,
    OllamaUnavailable,
    Overloaded,
    PayloadTooLarge,
    QABridgeError,
    QuestionTooLong,
    ServiceError,
    Timeout,
    Unauthorized,
    UsageError,
)

if TYPE_CHECKING:  # imported on first use: `import qabridge.errors` must not load llama.cpp or httpx
    from qabridge.api import QuestionAnsweringPipeline, pipeline
    from qabridge.client import AsyncClient, Client

_LAZY = {
    "pipeline": "qabridge.api",
    "QuestionAnsweringPipeline": "qabridge.api",
    "Client": "qabridge.client",
    "AsyncClient": "qabridge.client",
}

__all__ = [
    "__version__", "pipeline", "QuestionAnsweringPipeline", "Client", "AsyncClient",
    "QABridgeError", "UsageError", "MissingContext", "EmptyQuestion", "EmptyContext", "QuestionTooLong",
    "InvalidJSON", "InvalidField", "Unauthorized", "PayloadTooLarge", "ContextTooLong", "BatchTooLarge",
    "DataError", "ModelError", "ModelNotFound", "ServiceError", "Overloaded", "ModelLoading",
    "ModelUnavailable", "Timeout", "EngineUnavailable", "OllamaUnavailable", "OllamaResponseError",
    "EmbeddingsUnavailable", "ConnectError", "EngineError",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qabridge' has no attribute {name!r}")
