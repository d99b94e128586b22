"""One exception hierarchy for the whole package: the library, the CLI, the bridge and the client.

Each failure is one class; its HTTP status, stable ``code`` and CLI exit code are class
attributes, so the table below is the only place they are stated. The bridge turns any
:class:`QABridgeError` into ``{"error": {"code", "message"}}`` with ``status``;
:class:`qabridge.Client` turns such a body back into the same class (by ``code``); the CLI
prints one ``error:`` line and exits with ``exit_code``.

::

    QABridgeError                      500 error                exit 1
    ├── UsageError                     400 invalid_request      exit 2   the caller's mistake
    │   ├── MissingContext             400 missing_context
    │   ├── EmptyQuestion              400 empty_question
    │   ├── EmptyContext               400 empty_context
    │   ├── QuestionTooLong            400 question_too_long
    │   ├── EmptyInput                 400 empty_input
    │   ├── SequenceTooLong            400 sequence_too_long
    │   ├── InvalidJSON                400 invalid_json
    │   ├── InvalidField               422 invalid_type (or the field's own code: missing_field, ...)
    │   ├── InvalidUnicode             422 invalid_unicode
    │   ├── Unauthorized               401 unauthorized
    │   ├── NotFound                   404 not_found            (no such route)
    │   ├── MethodNotAllowed           405 method_not_allowed
    │   ├── UnsupportedMediaType       415 unsupported_media_type
    │   ├── UnsupportedFileType        415 unsupported_file_type
    │   ├── UnreadableFile             422 unreadable_file
    │   ├── PayloadTooLarge            413 payload_too_large
    │   │   ├── ContextTooLong         413 context_too_long
    │   │   ├── BatchTooLarge          413 batch_too_large
    │   │   └── TooManyDocuments       413 too_many_documents
    │   ├── DataError                  400 invalid_data         exit 3   a data file is missing or malformed
    │   ├── ModelError                 400 invalid_model        exit 4   a model/adapter/GGUF is wrong
    │   │   ├── ModelNotFound          404 model_not_found
    │   │   └── EmbeddingModelUnsupported 400 embedding_model_unsupported
    │   ├── OutputExists               400 output_exists        exit 5
    │   ├── OutputUnwritable           400 output_unwritable    exit 5
    │   └── ExtraNotInstalled          400 extra_not_installed  exit 2   an optional extra (ray) is missing
    ├── DeviceUnsupported              400 device_unsupported   exit 6
    ├── ServiceError                   503 service_unavailable  exit 7   the service cannot answer now
    │   ├── Overloaded                 429 overloaded                    (Retry-After)
    │   ├── ModelLoading               503 model_loading                 (Retry-After)
    │   ├── ModelUnavailable           503 model_unavailable
    │   ├── Timeout                    504 timeout
    │   └── EngineUnavailable          503 engine_unavailable
    │       ├── OllamaUnavailable      503 ollama_unavailable
    │       ├── OllamaResponseError    the status Ollama answered (>= 400), code ollama_error
    │       └── EmbeddingsUnavailable  503 embeddings_unavailable
    ├── ConnectError                   503 connect_error        exit 7   (client) the bridge does not answer
    └── EngineError                    500 engine_error         exit 1   the engine failed on checked input

``InternalError`` (500 ``internal_error``) is what the bridge answers for a bug; it is never raised
on purpose.
"""

from __future__ import annotations

from typing import ClassVar


class QABridgeError(Exception):
    """Base class: a failure qabridge understands and can explain in one line."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1
    #: Sent as the ``Retry-After`` header (seconds) when set.
    retry_after: ClassVar[int | None] = None

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        # A per-instance code/status only where one class covers a family of codes
        # (pydantic's field errors, a server answering an unknown code to the client).
        if code is not None:
            self.code = code  # type: ignore[misc]
        if status is not None:
            self.status = status  # type: ignore[misc]

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}

    def __reduce__(self):  # picklable across processes (Ray, multiprocessing) with its code
        return (_rebuild, (type(self), self.message, self.code, self.status))


def _rebuild(cls, message, code, status):
    return cls(message, code=code, status=status)


# -- the caller's mistakes ------------------------------------------------------------------------
class UsageError(QABridgeError):
    """The caller gave something we cannot use (a bad option, file or request field)."""

    code = "invalid_request"
    status = 400
    exit_code = 2


class MissingContext(UsageError):
    code = "missing_context"


class EmptyQuestion(UsageError):
    code = "empty_question"


class EmptyContext(UsageError):
    code = "empty_context"


class QuestionTooLong(UsageError):
    code = "question_too_long"


class EmptyInput(UsageError):
    code = "empty_input"


class SequenceTooLong(UsageError):
    """More tokens than the engine's window: refused before llama.cpp would abort the process."""

    code = "sequence_too_long"


class InvalidJSON(UsageError):
    code = "invalid_json"


class InvalidField(UsageError):
    """A request field failed validation; ``code`` names how (missing_field, out_of_range, ...)."""

    code = "invalid_type"
    status = 422


class InvalidUnicode(InvalidField):
    code = "invalid_unicode"


class Unauthorized(UsageError):
    code = "unauthorized"
    status = 401


class NotFound(UsageError):
    code = "not_found"
    status = 404


class MethodNotAllowed(UsageError):
    code = "method_not_allowed"
    status = 405


class UnsupportedMediaType(UsageError):
    code = "unsupported_media_type"
    status = 415


class UnsupportedFileType(UsageError):
    """(/api/extract) a file kind the bridge cannot take text from."""

    code = "unsupported_file_type"
    status = 415


class UnreadableFile(UsageError):
    """(/api/extract) an empty, damaged, locked or text-less file."""

    code = "unreadable_file"
    status = 422


class PayloadTooLarge(UsageError):
    code = "payload_too_large"
    status = 413


class ContextTooLong(PayloadTooLarge):
    code = "context_too_long"


class BatchTooLarge(PayloadTooLarge):
    code = "batch_too_large"


class TooManyDocuments(PayloadTooLarge):
    code = "too_many_documents"


class DataError(UsageError):
    """A data file is missing or malformed."""

    code = "invalid_data"
    exit_code = 3


class ModelError(UsageError):
    """A base model, adapter or GGUF file is missing, of the wrong family or corrupt."""

    code = "invalid_model"
    exit_code = 4


class ModelNotFound(ModelError):
    """The model asked for is not served here (or not in Ollama)."""

    code = "model_not_found"
    status = 404


class EmbeddingModelUnsupported(ModelError):
    """An Ollama embedding model whose pooling Ollama cannot embed with (e.g. pooling none)."""

    code = "embedding_model_unsupported"


class OutputExists(UsageError):
    """Refusing to overwrite something qabridge did not write."""

    code = "output_exists"
    exit_code = 5


class OutputUnwritable(UsageError):
    code = "output_unwritable"
    exit_code = 5


class ExtraNotInstalled(UsageError):
    """A feature needs an optional extra that is not installed (e.g. ``pip install 'qabridge[ray]'``)."""

    code = "extra_not_installed"


class DeviceUnsupported(QABridgeError):
    """The requested device or quantisation cannot run here (library, driver or hardware)."""

    code = "device_unsupported"
    status = 400
    exit_code = 6


# -- the service cannot answer now ----------------------------------------------------------------
class ServiceError(QABridgeError):
    """The request was fine; the service cannot answer it now."""

    code = "service_unavailable"
    status = 503
    exit_code = 7


class Overloaded(ServiceError):
    code = "overloaded"
    status = 429
    retry_after = 1


class ModelLoading(ServiceError):
    code = "model_loading"
    retry_after = 1


class ModelUnavailable(ServiceError):
    """No model could be loaded (the reason is in the message and in /api/health)."""

    code = "model_unavailable"
    retry_after = 1


class Timeout(ServiceError):
    code = "timeout"
    status = 504


class EngineUnavailable(ServiceError):
    """An engine or service the bridge depends on (Ollama, an embedder) is unreachable."""

    code = "engine_unavailable"
    retry_after = 1


class OllamaUnavailable(EngineUnavailable):
    code = "ollama_unavailable"


class OllamaResponseError(EngineUnavailable):
    """Ollama answered with an error; ``status`` is Ollama's (like ollama-python's ``ResponseError``)."""

    code = "ollama_error"
    retry_after = None

    def __init__(self, message: str, status: int = 503, *, code: str | None = None):
        super().__init__(message, code=code, status=status)


class EmbeddingsUnavailable(EngineUnavailable):
    """No embedder can rank passages (Ollama's embedding model gone and no local one)."""

    code = "embeddings_unavailable"


class ConnectError(ServiceError):
    """(Client) the bridge did not answer at all: refused, reset or timed out at the socket."""

    code = "connect_error"


class EngineError(QABridgeError):
    """The inference engine failed on input we had validated."""

    code = "engine_error"
    status = 500


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


#: code -> the most specific class that carries it (for the client, and for documentation).
BY_CODE: dict[str, type[QABridgeError]] = {c.code: c for c in [QABridgeError, *_all_subclasses(QABridgeError)]}

#: The codes of field validation (422) that :class:`InvalidField` carries per instance.
FIELD_CODES = ("missing_field", "empty_field", "out_of_range", "unknown_field", "invalid_type")


def from_response(status: int, body: object) -> QABridgeError:
    """The exception for an error response of the bridge (the client's half of the table)."""
    err = body.get("error") if isinstance(body, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    message = str(message or f"HTTP {status}")
    if code in FIELD_CODES:
        return InvalidField(message, code=code, status=status)
    cls = BY_CODE.get(str(code)) if code else None
    if cls is None or cls is QABridgeError:
        cls = UsageError if 400 <= status < 500 else ServiceError if status in (502, 503, 504) else QABridgeError
        return cls(message, code=str(code or cls.code), status=status)
    if cls is OllamaResponseError:
        return OllamaResponseError(message, status)
    exc = cls(message)
    if exc.status != status:
        exc.status = status  # type: ignore[misc]
    return exc
