"""A client for the bridge's HTTP API, sync and async (httpx), with typed responses and errors.

    from qabridge import Client

    with Client() as c:                          # http://127.0.0.1:8080, QABRIDGE_API_KEY if set
        r = c.qa("Who wrote it?", context="It was written by Ada.")
        r.answer, r.score                        # 'Ada', 0.93

An error answer raises the same class the bridge raised (``qabridge.Overloaded``,
``qabridge.ModelNotFound``, ...) with its ``code``, ``status`` and message; a bridge that does not
answer at all raises ``qabridge.ConnectError`` (``qabridge.Timeout`` when it is too slow).
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from qabridge.bridge.schemas import HealthResponse, ModelInfo, ModelList, QAResponse
from qabridge.errors import ConnectError, QABridgeError, Timeout, from_response

DEFAULT_HOST = "http://127.0.0.1:8080"
T = TypeVar("T", bound=BaseModel)


def _host(host: str | None) -> str:
    host = (host or os.environ.get("QABRIDGE_HOST") or DEFAULT_HOST).strip().rstrip("/")
    return host if host.startswith(("http://", "https://")) else "http://" + host


def _qa_body(question: str, context: str | None, documents: list[str] | None, **opts) -> dict:
    body: dict[str, Any] = {"question": question}
    if context is not None:
        body["context"] = context
    if documents is not None:
        body["documents"] = list(documents)
    body.update({k: v for k, v in opts.items() if v is not None})
    return body


class _Base:
    def __init__(self, host: str | None, api_key: str | None, timeout: float, headers: dict | None):
        self.host = _host(host)
        key = api_key if api_key is not None else os.environ.get("QABRIDGE_API_KEY")
        self.headers = {"Accept": "application/json", **(headers or {})}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.timeout = timeout

    @staticmethod
    def _parse(r: httpx.Response, model: type[T]) -> T:
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code >= 400:
            raise from_response(r.status_code, body)
        if body is None:
            raise QABridgeError(f"the bridge answered {r.status_code} with a body that is not JSON", code="invalid_response")
        return model.model_validate(body)

    @staticmethod
    def _batch_results(r: httpx.Response) -> list[QAResponse | QABridgeError]:
        data = _Base._parse(r, _BatchBody)
        return [from_response(_status_of(x), x) if "error" in x else QAResponse.model_validate(x) for x in data.results]

    def _wrap(self, exc: httpx.HTTPError) -> QABridgeError:
        if isinstance(exc, httpx.TimeoutException):
            return Timeout(f"{self.host}: no answer within {self.timeout:g} s")
        return ConnectError(f"{self.host}: {exc.__class__.__name__}: {exc}")


class _BatchBody(BaseModel):
    results: list[dict]


def _status_of(item: dict) -> int:
    from qabridge.errors import BY_CODE, FIELD_CODES

    code = (item.get("error") or {}).get("code")
    return 422 if code in FIELD_CODES else BY_CODE[code].status if code in BY_CODE else 500


class Client(_Base):
    """Blocking client. Methods mirror the API: ``qa``, ``batch``, ``health``, ``model_info``, ``models``."""

    def __init__(self, host: str | None = None, *, api_key: str | None = None, timeout: float = 120.0,
                 headers: dict | None = None, **httpx_kwargs):
        super().__init__(host, api_key, timeout, headers)
        self._http = httpx.Client(base_url=self.host, headers=self.headers, timeout=timeout, **httpx_kwargs)

    def _request(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            return self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise self._wrap(exc) from None

    def qa(self, question: str, context: str | None = None, *, documents: list[str] | None = None,
           top_k: int | None = None, max_answer_len: int | None = None, model: str | None = None,
           top_documents: int | None = None) -> QAResponse:
        body = _qa_body(question, context, documents, top_k=top_k, max_answer_len=max_answer_len, model=model,
                        top_documents=top_documents)
        return self._parse(self._request("POST", "/api/qa", json=body), QAResponse)

    def batch(self, items: list[dict]) -> list[QAResponse | QABridgeError]:
        """One result per item, in order: a response, or the error that item got (not raised)."""
        return self._batch_results(self._request("POST", "/api/qa/batch", json={"qa_pairs": list(items)}))

    def health(self) -> HealthResponse:
        return self._parse(self._request("GET", "/api/health"), HealthResponse)

    def model_info(self, model: str | None = None) -> ModelInfo:
        params = {"model": model} if model else None
        return self._parse(self._request("GET", "/api/model/info", params=params), ModelInfo)

    def models(self) -> ModelList:
        return self._parse(self._request("GET", "/api/models"), ModelList)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(_Base):
    """The same as :class:`Client`, with ``await``."""

    def __init__(self, host: str | None = None, *, api_key: str | None = None, timeout: float = 120.0,
                 headers: dict | None = None, **httpx_kwargs):
        super().__init__(host, api_key, timeout, headers)
        self._http = httpx.AsyncClient(base_url=self.host, headers=self.headers, timeout=timeout, **httpx_kwargs)

    async def _request(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise self._wrap(exc) from None

    async def qa(self, question: str, context: str | None = None, *, documents: list[str] | None = None,
                 top_k: int | None = None, max_answer_len: int | None = None, model: str | None = None,
                 top_documents: int | None = None) -> QAResponse:
        body = _qa_body(question, context, documents, top_k=top_k, max_answer_len=max_answer_len, model=model,
                        top_documents=top_documents)
        return self._parse(await self._request("POST", "/api/qa", json=body), QAResponse)

    async def batch(self, items: list[dict]) -> list[QAResponse | QABridgeError]:
        return self._batch_results(await self._request("POST", "/api/qa/batch", json={"qa_pairs": list(items)}))

    async def health(self) -> HealthResponse:
        return self._parse(await self._request("GET", "/api/health"), HealthResponse)

    async def model_info(self, model: str | None = None) -> ModelInfo:
        params = {"model": model} if model else None
        return self._parse(await self._request("GET", "/api/model/info", params=params), ModelInfo)

    async def models(self) -> ModelList:
        return self._parse(await self._request("GET", "/api/models"), ModelList)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
