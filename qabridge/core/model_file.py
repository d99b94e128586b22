"""Open and check a qabridge GGUF before llama.cpp sees it.

A wrong, truncated or foreign file becomes a clear :class:`ModelError`, never a
llama.cpp abort.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from qabridge.errors import ModelError

from .gguf_keys import PREFIX, REQUIRED, TASK_QA, Key
from .settings import QASettings
from .tokenizer import WordPieceTokenizer
from .windows import WindowSpec

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
TENSORS_PER_LAYER = 16
TENSORS_OUTSIDE_LAYERS = 5


@dataclass
class SpanHead:
    weight: np.ndarray  # [2, hidden] float32
    bias: np.ndarray  # [2] float32

    def logits(self, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = hidden @ self.weight.T + self.bias
        return out[:, 0], out[:, 1]


class QAModelMeta:
    """What a qabridge model file says about itself, whatever its format (GGUF here, ONNX in the
    bridge): window settings and abstention, read through ``get()``."""

    path: Path

    def get(self, key: str, default=None):  # pragma: no cover - provided by each format
        raise NotImplementedError

    @property
    def context_length(self) -> int:  # pragma: no cover - provided by each format
        raise NotImplementedError

    @property
    def num_layers(self) -> int:  # pragma: no cover - provided by each format
        raise NotImplementedError

    @property
    def base_model(self) -> str | None:
        """The encoder the model was trained from (``Key.BASE_MODEL``), as the adapter recorded it."""
        v = self.get(Key.BASE_MODEL)
        return str(v) if v else None

    @cached_property
    def settings(self) -> QASettings:
        try:
            s = QASettings.from_mapping({f: self.get(PREFIX + f) for f in QASettings.__dataclass_fields__})
        except (TypeError, ValueError):
            raise ModelError(f"{self.path}: window settings in the metadata are not integers") from None
        if s.max_seq_len > self.context_length:
            raise ModelError(f"{self.path}: max_seq_len {s.max_seq_len} exceeds the position table ({self.context_length})")
        return s

    @property
    def window_spec(self) -> WindowSpec:
        return self.settings.window_spec()

    @property
    def max_answer_len(self) -> int:
        return self.settings.max_answer_len

    def _float_key(self, key: str) -> float | None:
        v = self.get(key)
        try:
            return None if v is None else float(v)
        except (TypeError, ValueError):
            raise ModelError(f"{self.path}: {key} is not a number") from None

    @property
    def null_threshold(self) -> float | None:
        """The tuned abstention threshold, if the model was trained and tuned for it."""
        return self._float_key(Key.NULL_THRESHOLD)

    @property
    def documents_null_threshold(self) -> float | None:
        """The tuned abstention threshold of `documents` requests (their rank rule), if stored."""
        return self._float_key(Key.DOCUMENTS_NULL_THRESHOLD)

    @property
    def abstention(self) -> dict:
        """What the model knows about abstaining (for /api/model/info)."""
        negatives = str(self.get(Key.NEGATIVES, "none") or "none")
        return {
            "trained_with_negatives": negatives != "none",
            "negatives": negatives,
            "null_threshold": self.null_threshold,
            "tuning": self.get(Key.NULL_THRESHOLD_TUNING),
            "default_threshold": self.null_threshold if self.null_threshold is not None else 0.0,
            "documents_null_threshold": self.documents_null_threshold,
            "documents_passage_weight": self._float_key(Key.DOCUMENTS_PASSAGE_WEIGHT),
            "documents_tuning": self.get(Key.DOCUMENTS_NULL_THRESHOLD_TUNING),
        }

    def documents_threshold(self, passage_weight: float) -> float:
        """What a documents request without null_threshold is judged with: the stored documents cut
        where the bridge ranks at the weight it was tuned at, else the single-text threshold."""
        a = self.abstention
        if a["documents_null_threshold"] is not None and a["documents_passage_weight"] == float(passage_weight):
            return a["documents_null_threshold"]
        return a["default_threshold"]


class ModelFile(QAModelMeta):
    """A validated qabridge GGUF: metadata, tokenizer and span head."""

    def __init__(self, path: str | os.PathLike, *, require_qa: bool = True):
        self.path = Path(path)
        self._check_header()
        try:
            from gguf import GGUFReader

            self._reader = GGUFReader(str(self.path))
        except Exception as exc:  # the reader raises ValueError/IndexError/... on damaged files
            raise ModelError(f"{self.path}: not a readable GGUF ({exc.__class__.__name__}: {exc})") from None
        self._check_contents(require_qa)

    # -- checks -------------------------------------------------------------------------------
    def _check_header(self) -> None:
        if not self.path.exists():
            raise ModelError(f"{self.path}: no such model file")
        if not self.path.is_file():
            raise ModelError(f"{self.path}: not a file")
        size = self.path.stat().st_size
        if size < 24:
            raise ModelError(f"{self.path}: too small to be a GGUF ({size} bytes)")
        with open(self.path, "rb") as fh:
            head = fh.read(8)
        if head[:4] != GGUF_MAGIC:
            raise ModelError(f"{self.path}: not a GGUF file (bad magic {head[:4]!r})")
        (version,) = struct.unpack("<I", head[4:8])
        if version not in SUPPORTED_VERSIONS:
            raise ModelError(f"{self.path}: GGUF version {version} is not supported")

    def _check_contents(self, require_qa: bool) -> None:
        r = self._reader
        arch = self.get("general.architecture")
        if arch != "bert":
            raise ModelError(f"{self.path}: architecture is {arch!r}, expected 'bert'")
        if require_qa:
            missing = [k for k in REQUIRED if k not in r.fields]
            if missing:
                raise ModelError(f"{self.path}: not a qabridge QA model (missing {', '.join(missing)})")
            if self.get(Key.TASK) != TASK_QA:
                raise ModelError(f"{self.path}: qabridge task is {self.get(Key.TASK)!r}, not {TASK_QA!r}")
        n_layers = int(self.get("bert.block_count"))
        expected = TENSORS_OUTSIDE_LAYERS + TENSORS_PER_LAYER * n_layers
        if self.is_lora:
            if not r.tensors or any(not t.name.endswith((".lora_a", ".lora_b")) for t in r.tensors):
                raise ModelError(f"{self.path}: a LoRA GGUF must hold lora_a/lora_b tensors only")
        elif len(r.tensors) != expected:
            raise ModelError(f"{self.path}: {len(r.tensors)} tensors, expected {expected} for {n_layers} layers")
        size = self.path.stat().st_size
        for t in r.tensors:
            if int(t.data_offset) + int(t.n_bytes) > size:
                raise ModelError(f"{self.path}: truncated (tensor {t.name} runs past the end of the file)")

    # -- metadata -----------------------------------------------------------------------------
    @property
    def is_lora(self) -> bool:
        """A LoRA adapter (``qabridge export --lora-only``): served over its base, not alone."""
        return self.get("general.type") == "adapter" and self.get("adapter.type") == "lora"

    def get(self, key: str, default=None):
        f = self._reader.fields.get(key)
        if f is None:
            return default
        return f.contents()

    def qabridge_metadata(self) -> dict:
        out = {}
        for key, f in self._reader.fields.items():
            if key.startswith("qabridge.") and not key.startswith("qabridge.span_head"):
                out[key] = f.contents()
        return out

    @property
    def hidden_size(self) -> int:
        return int(self.get("bert.embedding_length"))

    @property
    def num_layers(self) -> int:
        return int(self.get("bert.block_count"))

    @property
    def context_length(self) -> int:
        return int(self.get("bert.context_length"))

    @property
    def outtype(self) -> str:
        return str(self.get(Key.OUTTYPE, "unknown"))

    @cached_property
    def span_head(self) -> SpanHead:
        h = self.hidden_size
        w = np.asarray(self.get(Key.SPAN_HEAD_WEIGHT), dtype=np.float32)
        b = np.asarray(self.get(Key.SPAN_HEAD_BIAS), dtype=np.float32)
        if w.size != 2 * h or b.size != 2:
            raise ModelError(f"{self.path}: span head has {w.size}+{b.size} values, expected {2 * h}+2")
        return SpanHead(w.reshape(2, h), b)

    @cached_property
    def tokenizer(self) -> WordPieceTokenizer:
        tokens = self.get("tokenizer.ggml.tokens")
        types = self.get("tokenizer.ggml.token_type")
        if not tokens or not types or len(tokens) != len(types):
            raise ModelError(f"{self.path}: vocabulary missing or inconsistent")
        return WordPieceTokenizer.from_gguf_tokens(list(tokens), list(types), lowercase=bool(self.get(Key.LOWERCASE, True)))

    def close(self) -> None:
        """Release the memory map of the file (the reader keeps one open)."""
        self._reader = None  # type: ignore[assignment]
