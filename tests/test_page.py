"""The page at `/` and the docs, driven in a real headless Chromium against a real `qabridge serve`.

Chromium and its WebDriver are Debian's (`scripts/setup-debian.sh`); selenium drives them. The
browser's DNS maps every host but loopback to nothing, so anything the pages tried to load from
outside the bridge would fail, and the tests check that nothing did.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest

from .helpers import DEV_SAMPLE, ROOT, Server, start_server

CHROMIUM = os.environ.get("QABRIDGE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("QABRIDGE_CHROMEDRIVER", "/usr/bin/chromedriver")
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
SCREENSHOT = ROOT / "docs" / "page.png"
WAIT_S = 60


def _paragraphs() -> list[dict]:
    data = json.loads(DEV_SAMPLE.read_text())
    return [p for art in data["data"] for p in art["paragraphs"]]


# -- the server ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ui_server(exported, tmp_path_factory):
    s = start_server(exported("q8_0"), tmp_path_factory.mktemp("ui_server"))
    yield s
    s.stop()


# -- the browser ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not (Path(exe).exists() or shutil.which(exe)):
            pytest.fail(f"{exe} is missing: run scripts/setup-debian.sh")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,820", "--force-device-scale-factor=1", "--lang=en-US",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                # No network but loopback: a page that needs a CDN would show it here.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(WAIT_S)
    yield drv
    drv.quit()


def _wait(drv, cond, what: str, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(drv, timeout, poll_frequency=0.1).until(lambda d: cond(d))
    except Exception as exc:
        logs = "; ".join(e["message"] for e in drv.get_log("browser"))[-1500:]
        err = drv.execute_script("var e = document.getElementById('error'); return e && !e.hidden ? e.textContent : '';")
        raise AssertionError(f"timed out waiting for {what}; page error: {err!r}; console: {logs}") from exc


def _open_page(drv, url: str) -> None:
    drv.get(url + "/")
    _wait(drv, lambda d: d.find_element("id", "status").text.startswith("Ready")
          and d.find_element("id", "model").get_attribute("value"), "the page to be ready")


def _foreign_requests(drv, base: str) -> list[str]:
    """URLs the browser sent requests to that are not the bridge's (since the last call).

    From Chrome's network log, not resource timing: a load the page's Content-Security-Policy
    blocked never left the browser, so it does not count.
    """
    sent: dict[str, str] = {}
    blocked: set[str] = set()
    for entry in drv.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            sent[msg["params"]["requestId"]] = msg["params"]["request"]["url"]
        elif msg["method"] == "Network.loadingFailed" and msg["params"].get("blockedReason") == "csp":
            blocked.add(msg["params"]["requestId"])
    return [u for rid, u in sent.items() if rid not in blocked
            and not u.startswith((base + "/", "data:", f"blob:{base}/"))]


def _set_context(drv, text: str) -> None:
    # As a paste does: the whole text at once, then the input event.
    drv.execute_script("const t = document.getElementById('context'); t.value = arguments[0];"
                       "t.dispatchEvent(new Event('input', {bubbles: true}));", text)


def _ask(drv, question: str, top_k: int = 3) -> None:
    from selenium.webdriver.common.keys import Keys

    k = drv.find_element("id", "top-k")
    k.clear()
    k.send_keys(str(top_k))
    q = drv.find_element("id", "question")
    q.clear()
    drv.execute_script("document.getElementById('meta').textContent = '';")  # _answered waits for it anew
    q.send_keys(question, Keys.ENTER)  # the keyboard submits the form


def _highlight(drv) -> dict:
    return drv.execute_script("""
        const m = document.querySelector('#source mark');
        if (!m) return null;
        const before = document.querySelector('#source .before').textContent;
        return {text: m.textContent, start: +m.dataset.start, end: +m.dataset.end,
                document: m.dataset.document === undefined ? null : +m.dataset.document,
                before: before, offset: +document.getElementById('source').dataset.offset};
    """)


def _answered(drv) -> bool:
    return bool(drv.find_element("id", "meta").text) and not drv.find_element("id", "ask").get_attribute("disabled")


def _api(server: Server, path: str, **kw) -> httpx.Response:
    return httpx.post(server.url + path, timeout=WAIT_S, **kw)


def _shown_error(drv) -> str:
    _wait(drv, lambda d: d.find_element("id", "error").is_displayed(), "an error message")
    return drv.find_element("id", "error").text


# -- tests ---------------------------------------------------------------------------------------
def test_page_answers_a_squad_question_and_highlights_the_span(ui_server, browser, tmp_path):
    para = _paragraphs()[0]
    qa = para["qas"][0]
    context, question = para["context"], qa["question"]
    _open_page(browser, ui_server.url)
    _set_context(browser, context)
    _ask(browser, question, top_k=3)
    _wait(browser, _answered, "the answer")

    api = _api(ui_server, "/api/qa", json={"question": question, "context": context, "top_k": 3}).json()
    hl = _highlight(browser)
    assert hl is not None, "no highlighted span"
    assert api["answer"], api
    assert (hl["text"], hl["start"], hl["end"]) == (api["answer"], api["start"], api["end"])
    assert context[hl["start"]:hl["end"]] == hl["text"]
    # The mark stands where the offsets say: the text before it is exactly context[:start].
    assert hl["offset"] == 0 and hl["before"] == context[: api["start"]]
    assert browser.find_element("id", "best-answer").text == api["answer"]
    assert f"{100 * api['score']:.1f}%" in browser.find_element("id", "best-meta").text
    shown = [e.text for e in browser.find_elements("css selector", "#answers .answer-text")]
    assert shown == [a["answer"] for a in api["answers"]]
    assert api["model"] in browser.find_element("id", "meta").text
    assert _foreign_requests(browser, ui_server.url) == []

    SCREENSHOT.parent.mkdir(exist_ok=True)
    shot = tmp_path / "page.png"
    browser.set_window_size(1280, 980)
    try:
        browser.execute_script("window.scrollTo(0, 0);")
        browser.save_screenshot(str(shot))
    finally:
        browser.set_window_size(1200, 820)
    assert shot.stat().st_size > 10_000
    if os.environ.get("QABRIDGE_UPDATE_SCREENSHOT") == "1":
        _save_small_png(shot, SCREENSHOT)

    # Keyboard: Tab to the second answer and press Enter: the highlight moves to it.
    if len(api["answers"]) > 1:
        from selenium.webdriver.common.keys import Keys

        second = browser.find_elements("css selector", "#answers .answer-item")[1]
        browser.execute_script("document.querySelectorAll('#answers .answer-item')[0].focus();")
        browser.switch_to.active_element.send_keys(Keys.TAB)
        assert browser.switch_to.active_element == second
        browser.switch_to.active_element.send_keys(Keys.ENTER)
        hl2 = _highlight(browser)
        a2 = api["answers"][1]
        assert (hl2["text"], hl2["start"], hl2["end"]) == (a2["answer"], a2["start"], a2["end"])
        assert hl2["before"] == context[: a2["start"]]


def test_highlight_counts_characters_as_the_api_does(ui_server, browser):
    # The API counts code points; JavaScript strings count UTF-16 units. Characters outside the
    # BMP before the answer would shift a naive highlight.
    para = _paragraphs()[1]
    context = "\U0001f4d8\U0001f30d " + para["context"]
    question = para["qas"][0]["question"]
    _open_page(browser, ui_server.url)
    _set_context(browser, context)
    _ask(browser, question, top_k=1)
    _wait(browser, _answered, "the answer")
    api = _api(ui_server, "/api/qa", json={"question": question, "context": context, "top_k": 1}).json()
    hl = _highlight(browser)
    assert api["start"] > 2
    assert (hl["text"], hl["start"], hl["end"]) == (api["answer"], api["start"], api["end"])
    assert hl["before"] == context[: api["start"]]


def _make_pdf(path: Path, text: str) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.add_font("DejaVu", fname=str(FONT))  # SQuAD text is not all Latin-1
    pdf.set_font("DejaVu", size=11)
    pdf.multi_cell(0, 6, text)
    pdf.output(str(path))


def test_documents_mode_reads_a_pdf_and_a_txt(ui_server, browser, tmp_path):
    paras = _paragraphs()
    pdf_para, txt_para = paras[3], paras[2]
    pdf, txt = tmp_path / "stadium.pdf", tmp_path / "notes.txt"
    _make_pdf(pdf, pdf_para["context"])
    txt.write_text(txt_para["context"], encoding="utf-8")

    _open_page(browser, ui_server.url)
    _set_context(browser, "")
    # Two files at once in "one text" mode: the page switches to documents mode by itself.
    browser.find_element("id", "file").send_keys(f"{pdf}\n{txt}")
    _wait(browser, lambda d: len(d.find_elements("css selector", "#documents li")) == 2, "both documents")
    assert browser.find_element("css selector", "input[name=mode][value=documents]").is_selected()
    names = [e.text for e in browser.find_elements("css selector", "#documents .doc-name")]
    assert sorted(names) == ["notes.txt", "stadium.pdf"]

    # What the server extracted is the paragraph (the PDF's line breaks aside).
    ext = {n: _api(ui_server, "/api/extract", files={"file": (p.name, p.read_bytes())}).json()
           for n, p in (("stadium.pdf", pdf), ("notes.txt", txt))}
    assert ext["stadium.pdf"]["type"] == "pdf" and ext["stadium.pdf"]["pages"] >= 1
    assert " ".join(ext["stadium.pdf"]["text"].split()) == " ".join(pdf_para["context"].split())
    assert ext["notes.txt"]["text"] == txt_para["context"]

    question = pdf_para["qas"][0]["question"]
    _ask(browser, question, top_k=3)
    _wait(browser, _answered, "the answer across documents")
    docs = [ext[n]["text"] for n in names]
    api = _api(ui_server, "/api/qa", json={"question": question, "documents": docs, "top_k": 3}).json()
    hl = _highlight(browser)
    assert (hl["text"], hl["start"], hl["end"], hl["document"]) == (api["answer"], api["start"], api["end"], api["document"])
    assert docs[api["document"]][api["start"]:api["end"]] == api["answer"]
    # The passage shown is the one the answer was read from, with the answer in place.
    passage = next(p for p in api["ranking"] if p["document"] == api["document"] and p["start"] <= api["start"] < p["end"])
    assert hl["offset"] == passage["start"]
    assert hl["before"].removeprefix("… ") == docs[api["document"]][passage["start"]:api["start"]]
    assert names[api["document"]] == "stadium.pdf"  # the question is about the PDF's paragraph
    assert "stadium.pdf" in browser.find_element("id", "best-meta").text
    assert "stadium.pdf" in browser.find_element("id", "source-title").text


def test_bad_files_and_bad_requests_show_the_apis_message(ui_server, browser, tmp_path):
    _open_page(browser, ui_server.url)
    cases = [("report.docx", b"PK\x03\x04 not really a docx", "unsupported_file_type", 415),
             ("broken.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog", "unreadable_file", 422),
             # Over the body limit of `qabridge serve` (2 MB by default).
             ("big.txt", b"word " * 420_000, "payload_too_large", 413)]
    for name, data, code, status in cases:
        f = tmp_path / name
        f.write_bytes(data)
        r = _api(ui_server, "/api/extract", files={"file": (name, data)})
        assert r.status_code == status and r.json()["error"]["code"] == code
        browser.execute_script("document.getElementById('error').hidden = true;")
        browser.find_element("id", "file").send_keys(str(f))
        shown = _shown_error(browser)
        assert r.json()["error"]["message"] in shown and code in shown and name in shown

    # An API error on asking: an empty context.
    browser.find_element("css selector", "input[name=mode][value=context]").click()
    _set_context(browser, "   ")
    browser.execute_script("document.getElementById('error').hidden = true;")
    _ask(browser, "Who won?")
    r = _api(ui_server, "/api/qa", json={"question": "Who won?", "context": "   ", "top_k": 3})
    assert r.status_code >= 400
    shown = _shown_error(browser)
    assert r.json()["error"]["message"] in shown and r.json()["error"]["code"] in shown


def test_no_answer_when_the_model_abstains(ui_server, browser):
    # The abstention field is not in the API yet: the page must already read `answer: null`.
    para = _paragraphs()[0]
    _open_page(browser, ui_server.url)
    browser.execute_script("""
        const real = window.fetch;
        window.fetch = async (url, opts) => {
          const r = await real(url, opts);
          if (!String(url).endsWith('api/qa')) return r;
          const body = await r.json();
          body.answer = null;
          body.answers = [];
          return new Response(JSON.stringify(body), {status: r.status, headers: {'content-type': 'application/json'}});
        };""")
    _set_context(browser, para["context"])
    _ask(browser, "What colour is the moon's cheese?")
    _wait(browser, _answered, "the abstention")
    assert browser.find_element("id", "best-answer").text == "No answer"
    assert browser.find_elements("css selector", "#answers li") == []
    assert _highlight(browser) is None or not browser.find_element("id", "source").is_displayed()
    assert not browser.find_element("id", "error").is_displayed()


def test_page_fits_a_phone_screen(ui_server, browser):
    browser.set_window_size(390, 844)
    try:
        _open_page(browser, ui_server.url)
        overflow = browser.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
        assert overflow <= 0
        for id_ in ("context", "question", "ask", "model", "api-key", "file"):
            box = browser.find_element("id", id_).rect
            assert box["x"] >= 0 and box["x"] + box["width"] <= 390, id_
    finally:
        browser.set_window_size(1200, 820)


@pytest.mark.parametrize("path,selector", [("/docs", ".opblock-summary-path"),
                                           ("/redoc", "[data-section-id^='operation/']")])
def test_docs_render_offline(ui_server, browser, path, selector):
    browser.get(ui_server.url + path)
    _wait(browser, lambda d: len(d.find_elements("css selector", selector)) >= 4, f"{path} operations")
    if path == "/docs":
        shown = {e.text.replace("\u200b", "") for e in browser.find_elements("css selector", selector)}
        assert {"/api/qa", "/api/extract", "/api/health", "/api/models"} <= shown
    assert _foreign_requests(browser, ui_server.url) == []
    # The docs' policy lets their own scripts run (a blocked script would show as a blank page).
    refused = [e["message"] for e in browser.get_log("browser") if "Refused to execute" in e["message"]
               or "Refused to load the script" in e["message"]]
    assert refused == []


def test_page_works_with_an_api_key(exported, browser, tmp_path):
    key = "page-test-key"
    s = start_server(exported("q8_0"), tmp_path, env={"QABRIDGE_API_KEY": key})
    try:
        # The page loads without the key (it is where the key is typed); the API does not answer without it.
        assert httpx.get(s.url + "/", timeout=10).status_code == 200
        assert httpx.get(s.url + "/api/models", timeout=10).status_code == 401
        assert _api(s, "/api/extract", files={"file": ("a.txt", b"text")}).status_code == 401
        browser.get(s.url + "/")
        browser.execute_script("sessionStorage.clear();")
        browser.refresh()
        _wait(browser, lambda d: "API key" in d.find_element("id", "status").text, "the request for a key")
        k = browser.find_element("id", "api-key")
        from selenium.webdriver.common.keys import Keys

        k.send_keys(key, Keys.ENTER)
        _wait(browser, lambda d: d.find_element("id", "model").get_attribute("value"), "the models with the key")
        assert browser.execute_script("return sessionStorage.getItem('qabridge.apiKey');") == key
        assert browser.execute_script("return localStorage.length;") == 0
        para = _paragraphs()[2]
        _set_context(browser, para["context"])
        _ask(browser, para["qas"][0]["question"], top_k=1)
        _wait(browser, _answered, "the answer with the key")
        assert _highlight(browser)["text"]
    finally:
        s.stop()


def _save_small_png(src: Path, dst: Path) -> None:
    """The committed screenshot: a palette PNG, a fraction of the browser's size."""
    from PIL import Image

    with Image.open(src) as im:
        im.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)


# -- extraction without a browser ---------------------------------------------------------------
def test_extract_text_of_each_kind(tmp_path):
    from pypdf import PdfWriter

    from qabridge.bridge.ui import extract_text
    from qabridge.errors import QABridgeError

    html = b"<html><head><title>T</title><style>p{}</style></head><body><h1>Super Bowl</h1>" \
           b"<p>Denver &amp; Carolina</p><script>alert(1)</script><ul><li>50</li></ul></body></html>"
    assert extract_text("page.HTML", html).text == "Super Bowl\nDenver & Carolina\n50"
    assert extract_text("notes.md", "# Ünïcode\n".encode("utf-16")).text == "# Ünïcode\n"
    assert extract_text("C:\\Users\\me\\a.txt", b"\xef\xbb\xbfbom").model_dump() == \
        {"text": "bom", "filename": "a.txt", "type": "text", "pages": None}

    pdf = tmp_path / "p.pdf"
    _make_pdf(pdf, "Page one text.")
    w = PdfWriter(clone_from=str(pdf))
    w.add_blank_page()  # a page with no text adds no text
    # Copy-protected only (an owner password, AES as most such files use): opens without a password.
    w.encrypt(user_password="", owner_password="owner", algorithm="AES-256")
    out = tmp_path / "open.pdf"
    w.write(str(out))
    got = extract_text("open.pdf", out.read_bytes())
    assert (got.text, got.pages, got.type) == ("Page one text.", 2, "pdf")

    locked = PdfWriter(clone_from=str(pdf))
    locked.encrypt(user_password="secret")
    out = tmp_path / "locked.pdf"
    locked.write(str(out))
    blank = PdfWriter()
    blank.add_blank_page(200, 200)
    scanned = tmp_path / "scan.pdf"
    blank.write(str(scanned))
    for name, data, code, status in [("locked.pdf", out.read_bytes(), "unreadable_file", 422),
                                     ("scan.pdf", scanned.read_bytes(), "unreadable_file", 422),
                                     ("x.exe", b"MZ", "unsupported_file_type", 415),
                                     ("noext", b"text", "unsupported_file_type", 415),
                                     ("bin.txt", b"a\x00b", "unreadable_file", 422),
                                     ("latin1.txt", "café".encode("latin-1"), "unreadable_file", 422),
                                     ("empty.html", b"", "unreadable_file", 422)]:
        with pytest.raises(QABridgeError) as e:
            extract_text(name, data)
        assert (e.value.code, e.value.status) == (code, status), name
