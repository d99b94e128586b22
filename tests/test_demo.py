"""scripts/demo.sh end to end: set-up, default model built into an empty cache, bridge answers the printed curl."""

import json
import os
import subprocess
import sys

import pytest

from .helpers import ROOT, free_port

pytestmark = pytest.mark.slow  # builds every candidate of the built-in model into an empty cache


def test_demo_script_serves_the_default_model(tmp_path):
    port = free_port()
    env = {**os.environ, "QABRIDGE_PORT": str(port), "QABRIDGE_DEMO_EXIT": "1", "QABRIDGE_CACHE": str(tmp_path / "cache")}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    out = r.stdout
    # A quiet first run: no build-backend warnings from set-up, no access line for the readiness
    # polls, and one line per stage of the first start, in order.
    terminal = r.stdout + r.stderr
    assert "BuildBackendWarning" not in terminal and "/api/health" not in terminal, terminal[-3000:]
    stages = [terminal.find(f"stage {i}/3: ") for i in (1, 2, 3)]
    assert -1 not in stages and stages == sorted(stages), terminal[-3000:]
    assert f"qabridge is ready on http://127.0.0.1:{port}" in out
    assert f"curl -s http://127.0.0.1:{port}/api/qa" in out
    answer = json.loads(out.split("It answered:", 1)[1].strip().splitlines()[0])
    assert answer["answer"] == "a field of artificial intelligence"
    assert answer["model"] == "bert-qa" and answer["engine"] in ("llama.cpp", "onnxruntime", "openvino")
    # --engine auto: the candidates built once into the (empty) cache, measured, the choice cached.
    built = sorted(p.name.split(".", 1)[1] for p in (tmp_path / "cache" / "models").glob("default-*"))
    from qabridge.bridge.engine_select import openvino_candidate_types
    from qabridge.export.onnx_export import ONNX_RECIPE
    from qabridge.export.openvino_export import INT8_RECIPE

    # f32.gguf: the yardstick the candidates' answers are checked against; OpenVINO (.xml + .bin) bf16
    # only on a CPU with bf16 kernels (AMX or AVX512-BF16), int8 (NNCF) wherever the extra is installed.
    tags = {"bf16": f"bf16.r{ONNX_RECIPE}", "int8": f"int8.r{ONNX_RECIPE}.{INT8_RECIPE}"}
    ov = [f"{tags[t]}.{ext}" for t in openvino_candidate_types() for ext in ("bin", "xml")]
    assert built == sorted(["bf16.gguf", "f32.gguf", f"int8.r{ONNX_RECIPE}.onnx", "q8_0.gguf", *ov]), built
    (choice,) = (tmp_path / "cache" / "engine-choice").glob("*.json")
    chosen = json.loads(choice.read_text())
    assert {"llama.cpp": "llama.cpp", "onnx": "onnxruntime", "openvino": "openvino"}[chosen["engine"]] == answer["engine"]
    assert len(chosen["candidates"]) == 3 + len(ov) // 2 and chosen["reference"] == "llama.cpp f32"
    # The Python API's default model is the same choice, read from the cache (not measured again).
    api = subprocess.run([sys.executable, "-c",
                          "import json, qabridge\nwith qabridge.pipeline() as qa:\n"
                          "    c = qa.engine_choice\n"
                          "    print(json.dumps({'engine': qa._engine.name, 'path': c.path, 'cached': c.cached,"
                          " 'answer': qa(question='Where is it?', context='The tower stands in Paris.')['answer']}))"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert api.returncode == 0, api.stderr[-3000:]
    got = json.loads(api.stdout.strip().splitlines()[-1])
    assert got == {"engine": answer["engine"], "path": chosen["path"], "cached": True, "answer": "Paris"}, got
