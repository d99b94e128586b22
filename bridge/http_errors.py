"""Every error the bridge answers goes through here: one body shape, statuses from qabridge.errors."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from qabridge.errors import (
    InvalidField,
    InvalidJSON,
    MethodNotAllowed,
    NotFound,
    QABridgeError,
    UsageError,
)

log = logging.getLogger("qabridge.bridge")

#: pydantic's error type -> the stable code the API answers with.
PYDANTIC_CODES = {
    "missing": "missing_field",
    "string_too_short": "empty_field",
    "too_short": "empty_field",
    "greater_than_equal": "out_of_range",
    "less_than_equal": "out_of_range",
    "greater_than": "out_of_range",
    "less_than": "out_of_range",
    "extra_forbidden": "unknown_field",
    "string_unicode": "invalid_unicode",
}

INTERNAL = {"error": {"code": "internal_error", "message": "internal error"}}


def from_validation(errors: list) -> UsageError:
    """The first of pydantic's errors as our exception (invalid_json 400, field errors 422)."""
    first = errors[0] if errors else {"type": "invalid", "loc": (), "msg": "invalid request"}
    etype = str(first.get("type", "invalid"))
    loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
    msg = f"{loc}: {first.get('msg')}" if loc else str(first.get("msg"))
    if etype == "json_invalid":
        return InvalidJSON(msg)
    code = PYDANTIC_CODES.get(etype, "invalid_type" if etype.endswith("_type") or "parsing" in etype else "invalid_request")
    return InvalidField(msg, code=code)


def error_response(exc: QABridgeError, headers: dict | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if exc.retry_after is not None:
        headers.setdefault("Retry-After", str(exc.retry_after))
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers or None)


def as_error_dict(exc: Exception) -> dict:
    if isinstance(exc, QABridgeError):
        return exc.to_dict()
    if isinstance(exc, ValidationError):
        return from_validation(exc.errors()).to_dict()
    return INTERNAL


def install(app: FastAPI) -> None:
    @app.exception_handler(QABridgeError)
    async def _qab(request: Request, exc: QABridgeError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _val(request: Request, exc: RequestValidationError):
        return error_response(from_validation(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        cls = {404: NotFound, 405: MethodNotAllowed}.get(exc.status_code)
        err = cls(str(exc.detail)) if cls else QABridgeError(str(exc.detail), code="http_error", status=exc.status_code)
        return error_response(err, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception):
        log.exception("unhandled error")
        return JSONResponse(INTERNAL, status_code=500)
