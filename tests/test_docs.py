"""The README and docs/ as a newcomer reads them: their links resolve and their runnable blocks run.

A fenced ``bash`` or ``python`` block preceded by the line ``<!-- runnable -->`` is run as written,
from the repository root with this venv's ``qabridge`` on PATH, against a real bridge serving the
built-in default model on a free loopback port (``localhost:8080`` in a block is rewritten to it).
Blocks left unmarked need what a test cannot hold open here (a running Ollama, ``scripts/demo.sh``
in the foreground, GPUs); each is exercised by the test named for it in its page.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import ROOT, start_server

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = "<!-- runnable -->"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
# [text](target) and <target>, not inside code spans or fenced blocks.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)|<((?:\.\.?/|docs/|benchmarks/)[^>\s]+)>")


def _prose(text: str) -> str:
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def runnable_blocks() -> list[tuple[str, str, str]]:
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for i, part in enumerate(text.split(MARK)[1:], 1):
            m = FENCE.match(part.lstrip("\n"))
            if m is None:
                raise AssertionError(f"{page.name}: '{MARK}' number {i} is not followed by a fenced block")
            out.append((f"{page.relative_to(ROOT)}#{i}", m.group(1), m.group(2)))
    return out


def test_every_page_link_resolves():
    broken = []
    for page in PAGES:
        for m in LINK.finditer(_prose(page.read_text(encoding="utf-8"))):
            target = (m.group(1) or m.group(2)).split("#", 1)[0]
            if not target or re.match(r"^[a-z]+:", target):
                continue  # a URL or an anchor on the same page
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, len(lines)
    assert lines[2] == "```bash" and lines[3].startswith("scripts/demo.sh") and lines[4].startswith("scripts/test.sh")
    # No dated history on the first page: dates belong to docs/quality.md and docs/performance.md.
    dated = [s for s in lines if re.search(r"\b20\d\d-\d\d-\d\d\b", s)]
    assert not dated, dated


def test_runnable_blocks_are_found():
    blocks = runnable_blocks()
    langs = {lang for _, lang, _ in blocks}
    assert {"bash", "python"} <= langs, blocks
    assert any(name.startswith("README.md") for name, _, _ in blocks)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    srv = start_server(None, tmp_path_factory.mktemp("docs"), argv=["--model", "bert-qa"], wait_ready=False)
    import httpx

    deadline = time.time() + 900  # a cold cache builds and measures the candidates first
    while time.time() < deadline:
        if srv.proc.poll() is not None:
            raise RuntimeError(srv.log.read_text()[-2000:])
        try:
            if httpx.get(srv.url + "/api/health", timeout=2).json().get("ready"):
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        srv.stop()
        raise RuntimeError("the bridge did not become ready: " + srv.log.read_text()[-2000:])
    yield srv
    srv.stop()


@pytest.mark.slow
@pytest.mark.parametrize("name,lang,code", runnable_blocks(), ids=lambda v: v if "#" in str(v) else "")
def test_runnable_block_runs_as_written(name, lang, code, bridge, tmp_path):
    port = bridge.url.rsplit(":", 1)[1]
    code = re.sub(r"(localhost|127\.0\.0\.1):8080", f"127.0.0.1:{port}", code)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "QABRIDGE_URL": bridge.url}
    if lang == "bash":
        cmd = ["bash", "-euo", "pipefail", "-c", code]
    elif lang == "python":
        cmd = [sys.executable, "-c", code]
    else:
        pytest.fail(f"{name}: no runner for {lang!r} blocks")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (name, r.stdout[-2000:], r.stderr[-3000:])
    assert r.stdout.strip(), f"{name} printed nothing"
    if '"error"' in r.stdout:
        raise AssertionError(f"{name}: an error body: {r.stdout[-1000:]}")
