"""One exception hierarchy for the whole package.

Every error carries a stable machine-readable ``code`` and the HTTP status it maps
to, so the CLI (exit code 2, one line) and the bridge (JSON error body) report the
same failure the same way.
"""

from __future__ import annotations


class QABridgeError(Exception):
    """Base class: a failure qabridge understands and can explain in one line."""

    code = "error"
    status = 500

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class UsageError(QABridgeError):
    """The caller gave something we cannot use (a bad option, file or request field)."""

    code = "invalid_request"
    status = 400


class DataError(UsageError):
    """A data file is missing or malformed."""

    code = "invalid_data"


class ModelError(UsageError):
    """A base model, adapter or GGUF file is missing, of the wrong family or corrupt."""

    code = "invalid_model"


class ModelNotFound(ModelError):
    code = "model_not_found"
    status = 404


class OutputExists(UsageError):
    """Refusing to overwrite something qabridge did not write."""

    code = "output_exists"


class PayloadTooLarge(UsageError):
    code = "payload_too_large"
    status = 413


class DeviceUnsupported(QABridgeError):
    """The requested quantisation cannot run on this device / library version."""

    code = "device_unsupported"
    status = 400


class EngineError(QABridgeError):
    """The inference engine failed on input we had validated."""

    code = "engine_error"
    status = 500


class EngineUnavailable(QABridgeError):
    """An engine (e.g. Ollama) is unreachable or still loading."""

    code = "engine_unavailable"
    status = 503
