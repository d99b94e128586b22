"""The models that come with qabridge: a served name, its adapter (package data), its base.

A built-in model is an adapter committed under ``models/`` (installed as ``qabridge.models``),
exported once per engine and weight type on first use and cached by the adapter's hash
(``qabridge.export.run.default_model``). ``qabridge serve --model NAME``, ``qabridge ask --model
NAME``, ``qabridge eval --model NAME`` and ``qabridge.pipeline(NAME)`` take these names; a file of
the same name in the working directory wins, as it always has.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BuiltinModel:
    name: str  # the name it is served under
    adapter_dir: str  # its folder under qabridge.models (the checkout's models/)
    base: str  # the named base (qabridge.train.bases) its adapter was trained on
    description: str  # one line for listings

    def adapter(self) -> Path:
        from qabridge.paths import models_dir

        return models_dir() / self.adapter_dir


#: The first is the default: what ``qabridge serve`` and ``pipeline()`` serve when given no model.
BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel("bert-qa", "lora", "all-minilm-l6-v2",
                     "all-MiniLM-L6-v2 (6 layers) + LoRA on SQuAD v1.1, distilled from bert-qa-accurate: the fast default"),
        BuiltinModel("bert-qa-accurate", "lora-accurate", "bge-small-en-v1.5",
                     "bge-small-en-v1.5 (12 layers) + LoRA on SQuAD v1.1: about 1.4 F1 more, half the speed"),
    )
}
DEFAULT_BUILTIN = next(iter(BUILTIN_MODELS))


def lookup_builtin(model: str | os.PathLike | None) -> BuiltinModel | None:
    """The built-in model ``model`` names (None: the default), unless a file of that name exists."""
    if model is None:
        return BUILTIN_MODELS[DEFAULT_BUILTIN]
    text = os.fspath(model)
    m = BUILTIN_MODELS.get(text)
    return m if m is not None and not Path(text).exists() else None

