"""The stages import downward only: core <- train <- export <- bridge <- CLI / public API."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Folder in the checkout -> import package it installs as.
FOLDERS = {"qabridge": "qabridge", "train": "qabridge.train", "export": "qabridge.export", "bridge": "qabridge.bridge"}
LAYERS = ["core", "train", "export", "bridge", "top"]
LEAVES = {"qabridge._version", "qabridge.errors", "qabridge.paths"}


def layer(module: str) -> str:
    if module in LEAVES or module == "qabridge.core" or module.startswith("qabridge.core."):
        return "core"
    for stage in ("train", "export", "bridge"):
        if module == f"qabridge.{stage}" or module.startswith(f"qabridge.{stage}."):
            return stage
    return "top"


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for p in (ROOT / folder).rglob("*.py"):
            rel = p.relative_to(ROOT / folder).with_suffix("")
            parts = [x for x in rel.parts if x != "__init__"]
            out[".".join([package, *parts])] = p
    return out


def imports_of(module: str, path: Path) -> list[tuple[int, str]]:
    """Every qabridge module ``module`` imports, at top level or inside functions."""
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "qabridge"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "qabridge":
                continue
            # `from qabridge.core import tokenizer` names a module; `from qabridge import x` a name.
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.append((node.lineno, sub if sub in MODULES else target))
    return found


MODULES = modules()


def violations() -> list[str]:
    bad = []
    for mod, path in MODULES.items():
        here = LAYERS.index(layer(mod))
        for line, target in imports_of(mod, path):
            if target == "qabridge":
                # The package root re-exports the public API lazily; stages must not import it.
                if here < LAYERS.index("top"):
                    bad.append(f"{path.relative_to(ROOT)}:{line}: {mod} imports the package root")
                continue
            if LAYERS.index(layer(target)) > here:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {mod} ({layer(mod)}) imports {target} ({layer(target)})")
    return bad


def test_the_layer_map_knows_every_stage():
    layers = {layer(m) for m in MODULES}
    assert layers == set(LAYERS), layers
    assert layer("qabridge.core.windows") == "core" and layer("qabridge.bridge.routes") == "bridge"


def test_no_stage_imports_a_later_one():
    assert violations() == []


def test_the_checker_catches_an_upward_import(tmp_path):
    # The same walk over a module that imports against the flow must report it.
    p = tmp_path / "features.py"
    p.write_text("from qabridge.bridge.llama_engine import gguf_pipeline\nfrom ..core import windows\n")
    found = imports_of("qabridge.train.features", p)
    assert ("qabridge.bridge.llama_engine" in [t for _, t in found])
    assert layer("qabridge.bridge.llama_engine") == "bridge" and LAYERS.index("bridge") > LAYERS.index("train")


def test_importing_a_stage_loads_no_later_stage():
    code = (
        "import sys, qabridge.core.pipeline, qabridge.core.model_file, qabridge.train.squad, qabridge.train.features;"
        "print(sorted(m for m in sys.modules if m.startswith(('qabridge.export', 'qabridge.bridge', 'qabridge.api', 'qabridge.client'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
