"""The bridge's own web page, file-to-text extraction and self-hosted API docs.

Everything a browser loads from the bridge comes from the bridge: the page's files live in
``static/`` next to this module, and Swagger UI / ReDoc come from the ``fastapi-offline`` package
(which ships their built files), so ``/docs`` renders without a CDN and tells no third party.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import re
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Protocol

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from qabridge.errors import PayloadTooLarge, UnreadableFile, UnsupportedFileType, UsageError

from .schemas import ErrorResponse

STATIC_DIR = Path(__file__).resolve().parent / "static"
VENDOR_PREFIX = "/static/vendor"

# The page runs only the bridge's own files: a stray external URL in it fails loudly in the browser.
_PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
             "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def _docs_csp(html: bytes) -> str:
    """A policy for the docs pages: their own inline start-up script (by hash) and the bridge only.

    ReDoc's sidebar shows a logo from its vendor's CDN, and Swagger UI may ask an online validator
    about the schema; the policy keeps both from leaving the browser (ReDoc hides the logo).
    """
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode()}'"
                      for m in re.finditer(rb"<script>(.*?)</script>", html, re.S))
    return ("default-src 'self'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
            f"script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; worker-src 'self' blob:; "
            "object-src 'none'; base-uri 'self'; frame-ancestors 'none'")


def _with_csp(resp: HTMLResponse) -> HTMLResponse:
    resp.headers["Content-Security-Policy"] = _docs_csp(bytes(resp.body))
    return resp


SUFFIX_TYPES = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown",
                ".html": "html", ".htm": "html", ".pdf": "pdf"}


class UIConfig(Protocol):
    max_body_bytes: int
    api_key: str | None


class ExtractResponse(BaseModel):
    text: str = Field(description="The file's plain text, ready to use as a context or a document.")
    filename: str = Field(description="The uploaded file's name (without any folder).")
    type: str = Field(description="text, markdown, html or pdf.")
    pages: int | None = Field(default=None, description="With PDF: how many pages the file has.")


def vendor_dir() -> Path:
    """The folder of Swagger UI's and ReDoc's built files, as shipped by fastapi-offline."""
    return Path(str(files("fastapi_offline") / "static"))


# -- extraction -----------------------------------------------------------------------------------
class _TextOfHTML(HTMLParser):
    """Visible text of an HTML document, one line per block element."""

    _SKIP = frozenset({"script", "style", "template", "noscript", "head", "svg", "math"})
    _BLOCK = frozenset({"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header",
                        "footer", "aside", "nav", "main", "blockquote", "pre", "h1", "h2", "h3", "h4", "h5",
                        "h6", "dt", "dd", "dl", "figcaption", "hr", "title", "caption", "form", "address"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.title: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self._SKIP:
            self.skip += 1
        if tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self._SKIP and self.skip:
            self.skip -= 1
        if tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self.skip:
            self.parts.append(data)

    def text(self) -> str:
        lines = (re.sub(r"[ \t\r\f\v\u00a0]+", " ", ln).strip() for ln in "".join(self.parts).split("\n"))
        body = "\n".join(ln for ln in lines if ln)
        # Pages whose body has no text (e.g. all script) still have a title worth returning.
        return body or " ".join("".join(self.title).split())


def _decode_text(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    text = data.decode("utf-8-sig")
    if "\x00" in text:
        raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte: a binary file")
    return text


def _html_text(data: bytes) -> str:
    parser = _TextOfHTML()
    parser.feed(_decode_text(data))
    parser.close()
    return parser.text()


def _pdf_text(data: bytes) -> tuple[str, int]:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError

    if b"%PDF-" not in data[:1024]:  # the header may follow a little junk, as readers allow
        raise UnreadableFile("this is not a PDF file (no %PDF header)")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnreadableFile("the PDF is encrypted with a password")
        pages = [(p.extract_text() or "").strip() for p in reader.pages]
    except FileNotDecryptedError:
        raise UnreadableFile("the PDF is encrypted with a password") from None
    except UsageError:
        raise
    except Exception as exc:  # pypdf raises many kinds (PdfReadError, ValueError, ...) on damaged files
        raise UnreadableFile(f"the PDF could not be read ({exc.__class__.__name__}: {exc})"[:300]) from None
    return "\n\n".join(p for p in pages if p), len(pages)


def extract_text(filename: str, data: bytes) -> ExtractResponse:
    """Plain text of one uploaded file; UsageError with a stable code when it cannot be had."""
    # Browsers may send a full Windows path as the name; keep only the last part.
    name = PurePosixPath(PureWindowsPath(filename or "").name).name
    kind = SUFFIX_TYPES.get(Path(name).suffix.lower())
    if kind is None:
        shown = Path(name).suffix or name or "a file without a name"
        raise UnsupportedFileType(f"cannot read {shown!s} files; use " + ", ".join(sorted(SUFFIX_TYPES)))
    if not data:
        raise UnreadableFile(f"{name} is empty")
    pages = None
    try:
        if kind == "pdf":
            text, pages = _pdf_text(data)
        elif kind == "html":
            text = _html_text(data)
        else:
            text = _decode_text(data)
    except UnicodeError:
        raise UnreadableFile(f"{name} is not UTF-8 (or UTF-16) text") from None
    if not text.strip():
        why = " (a scanned PDF has no text layer)" if kind == "pdf" else ""
        raise UnreadableFile(f"{name} has no text{why}")
    return ExtractResponse(text=text, filename=name, type=kind, pages=pages)


# -- mounting -------------------------------------------------------------------------------------
def mount_ui(app: FastAPI, cfg: UIConfig) -> None:
    """Add ``/``, ``/static/...``, ``/docs``, ``/redoc`` and ``POST /api/extract`` to the app."""
    limit = int(cfg.max_body_bytes)
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    # The vendor mount comes first: Starlette takes the first matching route, and /static would
    # otherwise answer (404) for the vendor files too.
    app.mount(VENDOR_PREFIX, StaticFiles(directory=vendor_dir()), name="vendor")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": _PAGE_CSP, "Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_csp(get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=root + oauth2_url,
            swagger_js_url=f"{root}{VENDOR_PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{VENDOR_PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{root}/static/favicon.svg",
            # No online validator badge: it would send the schema's URL to a third party.
            swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},
        ))

    @app.get(oauth2_url, include_in_schema=False)
    async def docs_oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_csp(get_redoc_html(
            openapi_url=root + openapi_url, title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{VENDOR_PREFIX}/redoc.standalone.js",
            redoc_favicon_url=f"{root}/static/favicon.svg", with_google_fonts=False,
        ))

    errors: dict[int | str, dict[str, Any]] = {
        s: {"model": ErrorResponse, "description": d}
        for s, d in ((413, "payload_too_large"), (415, "unsupported_file_type"), (422, "unreadable_file"))
    }

    @app.post("/api/extract", response_model=ExtractResponse, responses=errors,
              summary="Plain text of an uploaded .txt, .md, .html or .pdf file")
    async def extract(file: UploadFile = File(description="One file: .txt, .md, .html or .pdf")) -> ExtractResponse:
        # The body limit of `qabridge serve` already stops larger uploads; this keeps the same
        # limit wherever the app runs without that middleware.
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLarge(f"file over {limit} bytes", code="payload_too_large")
        # PDF parsing is CPU work in pure Python: keep it off the event loop.
        return await asyncio.get_running_loop().run_in_executor(None, extract_text, file.filename or "", data)
