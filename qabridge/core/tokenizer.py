"""WordPiece tokenisation with character offsets.

Built from a HF model directory (training, torch engine) or from the vocabulary
stored in a GGUF file (serving: the GGUF alone is enough). Both produce the same
ids as ``BertTokenizerFast`` for uncased/cased BERT vocabularies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

from qabridge.errors import ModelError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True)
class Encoded:
    ids: np.ndarray  # int32 token ids
    offsets: np.ndarray  # int32 [n, 2] character spans into the text


class WordPieceTokenizer:
    """A thin wrapper around ``tokenizers`` that returns numpy ids and offsets."""

    def __init__(self, vocab: list[str], *, lowercase: bool = True, strip_accents: bool | None = None):
        if not vocab:
            raise ModelError("empty WordPiece vocabulary")
        self.vocab = vocab
        self.lowercase = lowercase
        index = {tok: i for i, tok in enumerate(vocab)}
        for special in ("[UNK]", "[CLS]", "[SEP]"):
            if special not in index:
                raise ModelError(f"WordPiece vocabulary lacks {special}")
        self.cls_id = index["[CLS]"]
        self.sep_id = index["[SEP]"]
        self.unk_id = index["[UNK]"]
        self.pad_id = index.get("[PAD]", 0)
        tok = Tokenizer(WordPiece(index, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.add_special_tokens([t for t in SPECIAL_TOKENS if t in index])
        self._tok = tok

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def from_hf_dir(cls, path: str | Path) -> WordPieceTokenizer:
        path = Path(path)
        lowercase, strip = True, None
        cfg = path / "tokenizer_config.json"
        if cfg.exists():
            conf = json.loads(cfg.read_text())
            lowercase = bool(conf.get("do_lower_case", True))
            strip = conf.get("strip_accents")
        vocab_file = path / "vocab.txt"
        if vocab_file.exists():
            vocab = vocab_file.read_text(encoding="utf-8").split("\n")
            if vocab and vocab[-1] == "":
                vocab = vocab[:-1]
        elif (path / "tokenizer.json").exists():
            tj = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
            model = tj.get("model", {})
            if model.get("type") != "WordPiece":
                raise ModelError(f"{path}: tokenizer is {model.get('type')}, not WordPiece (not BERT-family)")
            items = sorted(model["vocab"].items(), key=lambda kv: kv[1])
            vocab = [k for k, _ in items]
        else:
            raise ModelError(f"{path}: no vocab.txt or tokenizer.json")
        return cls(vocab, lowercase=lowercase, strip_accents=strip)

    @classmethod
    def from_gguf_tokens(cls, tokens: list[str], token_types: list[int], *, lowercase: bool) -> WordPieceTokenizer:
        """Undo llama.cpp's phantom-space vocabulary form (``▁word`` / ``ing`` for ``##ing``)."""
        control = 3  # gguf.TokenType.CONTROL
        vocab = []
        for tok, ttype in zip(tokens, token_types):
            if ttype == control:
                vocab.append(tok)
            elif tok.startswith("\u2581"):
                vocab.append(tok[1:])
            else:
                vocab.append("##" + tok)
        return cls(vocab, lowercase=lowercase)

    # -- encoding -----------------------------------------------------------------------------
    def encode(self, text: str) -> Encoded:
        enc = self._tok.encode(text, add_special_tokens=False)
        ids = np.asarray(enc.ids, dtype=np.int32)
        offsets = np.asarray(enc.offsets, dtype=np.int32).reshape(-1, 2)
        return Encoded(ids, offsets)

    def encode_batch(self, texts: list[str]) -> list[Encoded]:
        out = []
        for enc in self._tok.encode_batch(texts, add_special_tokens=False):
            out.append(
                Encoded(
                    np.asarray(enc.ids, dtype=np.int32),
                    np.asarray(enc.offsets, dtype=np.int32).reshape(-1, 2),
                )
            )
        return out

    def decode(self, ids: list[int]) -> str:
        """Token ids back to text (WordPiece joins ``##`` pieces; lower-cased if the model is)."""
        return self._tok.decode(list(map(int, ids)))

    def ids(self, text: str, *, special: bool = True) -> list[int]:
        body = self._tok.encode(text, add_special_tokens=False).ids
        return [self.cls_id, *body, self.sep_id] if special else list(body)

    def save_vocab(self, path: str | Path) -> None:
        Path(path).write_text("\n".join(self.vocab) + "\n", encoding="utf-8")
