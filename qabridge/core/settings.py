"""The window and decoding settings a model is trained with and served with: stated once, here.

Training writes them into the adapter's ``qa_config.json``, export copies them into the GGUF's
``qabridge.*`` keys, and the bridge reads them back; every default in the code is this one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

MAX_SEQ_LEN = 384  # tokens per window: [CLS] question [SEP] context [SEP]
DOC_STRIDE = 128  # tokens of overlap between consecutive windows (HF semantics)
MAX_QUESTION_TOKENS = 64
MAX_ANSWER_LEN = 30  # longest answer, in tokens


@dataclass(frozen=True)
class QASettings:
    max_seq_len: int = MAX_SEQ_LEN
    doc_stride: int = DOC_STRIDE
    max_question_tokens: int = MAX_QUESTION_TOKENS
    max_answer_len: int = MAX_ANSWER_LEN

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any], prefix: str = "") -> QASettings:
        """Read from a dict (``qa_config.json``) or GGUF metadata (``prefix="qabridge."``); missing keys keep the defaults."""
        kw = {}
        for f in fields(cls):
            v = d.get(prefix + f.name)
            if v is not None:
                kw[f.name] = int(v)
        return cls(**kw)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def window_spec(self):
        from .windows import WindowSpec

        return WindowSpec(self.max_seq_len, self.doc_stride, self.max_question_tokens)


DEFAULTS = QASettings()
