"""GGUF metadata that qabridge adds, all under one ``qabridge.`` prefix.

llama.cpp ignores unknown keys but refuses unknown tensors, so the span head
travels as metadata arrays, not as a tensor.
"""

from __future__ import annotations

from enum import Enum

PREFIX = "qabridge."


class Key:
    VERSION = "qabridge.version"  # str: qabridge version that wrote the file
    TASK = "qabridge.task"  # str: always "extractive-qa"
    SPAN_HEAD_WEIGHT = "qabridge.span_head.weight"  # [2*hidden] f32, row-major (start row, end row)
    SPAN_HEAD_BIAS = "qabridge.span_head.bias"  # [2] f32
    MAX_SEQ_LEN = "qabridge.max_seq_len"  # u32: window length the model was trained with
    DOC_STRIDE = "qabridge.doc_stride"  # u32: overlap between windows
    MAX_QUESTION_TOKENS = "qabridge.max_question_tokens"  # u32
    MAX_ANSWER_LEN = "qabridge.max_answer_len"  # u32: default longest answer, in tokens
    LOWERCASE = "qabridge.lowercase"  # bool
    SEGMENT_IDS = "qabridge.segment_ids"  # str: SegmentIds value
    BASE_MODEL = "qabridge.base_model"  # str
    ADAPTER_SHA256 = "qabridge.adapter_sha256"  # str: hash of the adapter files ("" for a plain base)
    OUTTYPE = "qabridge.outtype"  # str: OutType value
    # str: sha256 of the base's model.safetensors, in a LoRA GGUF and in the plain base it runs over.
    BASE_SHA256 = "qabridge.base_sha256"
    # Abstention (optional; absent for models trained without unanswerable examples).
    NEGATIVES = "qabridge.negatives"  # str: the generated negatives trained with ("none", "topical,adversarial", ...)
    NULL_THRESHOLD = "qabridge.null_threshold"  # f32: abstain iff log p(no answer) - log p(best span) > this
    NULL_THRESHOLD_TUNING = "qabridge.null_threshold_tuning"  # str: how it was tuned (data, questions, F1)
    # f32: the same for `documents` requests, where each span's rank is its margin over [CLS] plus the
    # passage weight x its passage's similarity: abstain iff weight x 1.0 - best rank > this. A reader
    # trained with negatives has margins far below one trained without, so it needs its own cut.
    DOCUMENTS_NULL_THRESHOLD = "qabridge.documents_null_threshold"
    DOCUMENTS_NULL_THRESHOLD_TUNING = "qabridge.documents_null_threshold_tuning"  # str: how it was tuned
    # f32: the passage weight that cut was tuned at; a bridge run with another weight ranks on
    # another scale, so it falls back to NULL_THRESHOLD there.
    DOCUMENTS_PASSAGE_WEIGHT = "qabridge.documents_passage_weight"


#: Keys a GGUF must carry for the bridge to serve it.
REQUIRED = (
    Key.VERSION,
    Key.TASK,
    Key.SPAN_HEAD_WEIGHT,
    Key.SPAN_HEAD_BIAS,
    Key.MAX_SEQ_LEN,
    Key.DOC_STRIDE,
    Key.LOWERCASE,
    Key.SEGMENT_IDS,
)

TASK_QA = "extractive-qa"
TASK_EMBEDDING = "embedding"


class SegmentIds(str, Enum):
    #: Trained with token-type id 0 everywhere: what llama.cpp's BERT graph computes.
    ZEROS = "zeros"


class OutType(str, Enum):
    F32 = "f32"
    F16 = "f16"
    BF16 = "bf16"
    Q8_0 = "q8_0"
