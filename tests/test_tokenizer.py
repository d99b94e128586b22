"""Tokenisation: ours == HF's, the GGUF vocabulary round-trips, llama.cpp's own tokenizer agrees."""

import pytest

from qabridge.core.tokenizer import WordPieceTokenizer

ODD = [
    "Café au lait à Genève, naïve façade — résumé?",
    "Ångström, Øresund, Łódź, İstanbul",
    "What's the 3rd-largest city (by area) in the U.S.?",
    "中文字符 and emoji 🙂 mixed",
    "tab\tand\nnewline  spaces",
]


@pytest.fixture(scope="module")
def hf_tok(offline_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(offline_base))


def _texts(dev_examples):
    return [e.question for e in dev_examples] + [e.context[:300] for e in dev_examples[:20]] + ODD


def test_our_wordpiece_matches_hf(offline_base, hf_tok, dev_examples):
    ours = WordPieceTokenizer.from_hf_dir(offline_base)
    for t in _texts(dev_examples):
        assert ours.ids(t) == hf_tok(t)["input_ids"], t


def test_offsets_point_into_the_text(offline_base, dev_examples):
    ours = WordPieceTokenizer.from_hf_dir(offline_base)
    for e in dev_examples[:20]:
        enc = ours.encode(e.context)
        assert (enc.offsets[:, 0] < enc.offsets[:, 1]).all()
        assert enc.offsets[-1, 1] <= len(e.context)


def test_gguf_vocabulary_round_trips(exported, hf_tok, dev_examples):
    from qabridge.core.model_file import ModelFile

    tok = ModelFile(exported("q8_0")).tokenizer
    for t in _texts(dev_examples):
        assert tok.ids(t) == hf_tok(t)["input_ids"], t


def test_llama_cpp_tokenizer_matches_hf(exported, hf_tok, dev_examples):
    from qabridge.bridge.llama_engine import LlamaCppEngine
    from qabridge.core.model_file import ModelFile

    eng = LlamaCppEngine(ModelFile(exported("q8_0")))
    try:
        mismatches = [t for t in _texts(dev_examples) if eng.tokenize(t) != hf_tok(t)["input_ids"]]
    finally:
        eng.close()
    assert mismatches == []
