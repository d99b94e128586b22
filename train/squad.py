"""SQuAD-format data: loading, validation and the hub fallback.

Pure Python (no torch) so the bridge and `qabridge eval` can read SQuAD files too.
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from qabridge.errors import DataError

#: Name accepted by ``--data`` for the hub dataset.
HUB_NAME = "squad"


@dataclass(frozen=True)
class Answer:
    text: str
    start: int  # character offset into the context

    @property
    def end(self) -> int:
        return self.start + len(self.text)


@dataclass(frozen=True)
class Example:
    id: str
    title: str
    context: str
    question: str
    answers: tuple[Answer, ...] = field(default_factory=tuple)
    # SQuAD 2.0: the context does not answer the question (then ``answers`` is empty).
    is_impossible: bool = False
    # How the example came to be: "" when read from data, else the generator's kind
    # ("topical", "adversarial"; see train/negatives.py).
    kind: str = ""

    @property
    def has_answer(self) -> bool:
        return bool(self.answers) and not self.is_impossible


class Examples(list):
    """The examples of one file, with what loading repaired or left out (see :func:`load_squad`).

    A plain ``list`` of :class:`Example` otherwise, so every caller that takes a list takes it.
    """

    def __init__(self, items=(), *, reanchored: int = 0, dropped: tuple[str, ...] = (),
                 skipped: tuple[str, ...] = ()) -> None:
        super().__init__(items)
        #: Answers whose ``answer_start`` missed their text and were moved to its nearest exact occurrence.
        self.reanchored = reanchored
        #: Ids of questions that lost an answer absent from their context but kept another.
        self.dropped = dropped
        #: Ids of questions left out: none of their answers occurs in their context.
        self.skipped = skipped

    def notes(self, where: str = "") -> list[str]:
        """One sentence per repair, for the terminal (nothing when the file was clean)."""
        head = f"{where}: " if where else ""
        out = []
        if self.reanchored:
            out.append(f"{head}{self.reanchored} answer(s) re-anchored (answer_start missed its text by "
                       "whitespace or pointed at another copy; moved to the nearest exact occurrence)")
        if self.dropped:
            out.append(f"{head}{len(self.dropped)} question(s) kept without an answer text absent from "
                       f"their context: {_ids(self.dropped)}")
        if self.skipped:
            out.append(f"{head}{len(self.skipped)} question(s) skipped, no answer text occurs in their "
                       f"context: {_ids(self.skipped)} (--strict refuses such a file instead)")
        return out


def _ids(ids: tuple[str, ...], n: int = 10) -> str:
    shown = ", ".join(ids[:n])
    return shown + (f" and {len(ids) - n} more" if len(ids) > n else "")


def load_squad(source: str | os.PathLike, *, split: str = "train", validate: bool = True,
               strict: bool = False) -> Examples:
    """Load SQuAD v1.1 or v2.0 examples from a ``.json``/``.json.gz``/``.json.xz`` file or the hub name ``squad``.

    Files written by hand are forgiven what the official SQuAD evaluation script forgives (it never
    reads ``answer_start``): an ``answer_start`` that misses its text (off by whitespace, or at
    another copy) is moved to the nearest occurrence of the text in the context, where whitespace
    runs may differ and surrounding whitespace is trimmed; an answer whose text does not occur in its
    context is left out, and so is a question left with none (never turned into an unanswerable
    one). What was repaired is on the result (:class:`Examples`). With ``strict`` the first such
    answer is an error naming the file and question id instead; ``validate=False`` takes every
    offset as written. Ids may be strings or integers. SQuAD 2.0 questions marked
    ``is_impossible`` are read as unanswerable examples (``plausible_answers`` is ignored); one
    that is marked so and still lists answers is an error naming its id.
    """
    if str(source) == HUB_NAME:
        return Examples(_load_hub(split))
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: no such file (expected a SQuAD-format .json or .json.gz, or '{HUB_NAME}')")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a SQuAD-format .json or .json.gz file")
    try:
        opener = {".gz": gzip.open, ".xz": lzma.open}.get(path.suffix, open)
        with opener(path, "rt", encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not readable as SQuAD JSON ({exc.__class__.__name__}: {exc})") from None
    fixes = _Fixes()
    items = list(_parse(doc, str(path), validate, strict, fixes))
    if not items:
        if fixes.skipped:
            raise DataError(f"{path}: holds no usable question: the answer texts of all {len(fixes.skipped)} "
                            f"occur nowhere in their contexts ({_ids(tuple(fixes.skipped))})")
        raise DataError(f"{path}: holds no questions")
    return Examples(items, reanchored=fixes.reanchored, dropped=tuple(fixes.dropped), skipped=tuple(fixes.skipped))


@dataclass
class _Fixes:
    reanchored: int = 0
    dropped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def reanchor(context: str, text: str, start: int) -> Answer | None:
    """The occurrence of ``text`` in ``context`` nearest ``start`` (exact first, then with whitespace
    runs matched loosely and the text trimmed), or None when it occurs nowhere."""
    if context[start : start + len(text)] == text:
        return Answer(text, start)
    hits = [m.start() for m in re.finditer(re.escape(text), context)] if text else []
    if hits:
        return Answer(text, min(hits, key=lambda h: (abs(h - start), h)))
    words = text.split()
    if not words:
        return None
    loose = [m for m in re.finditer(r"\s+".join(map(re.escape, words)), context)]
    if not loose:
        return None
    m = min(loose, key=lambda m: (abs(m.start() - start), m.start()))
    return Answer(m.group(0), m.start())


def _parse(doc: object, where: str, validate: bool, strict: bool, fixes: _Fixes) -> Iterator[Example]:
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{where}: not SQuAD format (expected an object with a 'data' list)")
    for a_i, article in enumerate(doc["data"]):
        try:
            title = str(article.get("title", ""))
            paragraphs = article["paragraphs"]
            for p_i, para in enumerate(paragraphs):
                context = para["context"]
                if not isinstance(context, str):
                    raise TypeError("context is not a string")
                for q_i, qa in enumerate(para["qas"]):
                    qid = str(qa.get("id", f"a{a_i}-p{p_i}-q{q_i}"))
                    question = qa["question"]
                    if not isinstance(question, str):
                        raise TypeError(f"question {qid} is not a string")
                    impossible = qa.get("is_impossible", None)
                    if impossible is not None and not isinstance(impossible, bool):
                        raise DataError(
                            f"{where}: question {qid!r}: is_impossible must be true or false, not {impossible!r}"
                        )
                    if impossible and qa.get("answers"):
                        # A v2 file that contradicts itself: which label to train on is unknowable.
                        raise DataError(
                            f"{where}: question {qid!r} is marked is_impossible but lists "
                            f"{len(qa['answers'])} answer(s); an unanswerable question must have \"answers\": []"
                        )
                    if impossible is False and not qa.get("answers"):
                        raise DataError(
                            f"{where}: question {qid!r} is marked is_impossible: false but lists no answers"
                        )
                    answers, lost = [], 0
                    for ans in qa.get("answers", []):
                        text, start = ans["text"], int(ans["answer_start"])
                        if not isinstance(text, str):
                            raise TypeError(f"question {qid}: answer text is not a string")
                        if not validate or context[start : start + len(text)] == text:
                            answers.append(Answer(text, start))
                            continue
                        if strict:
                            raise DataError(
                                f"{where}: question {qid!r}: answer_start {start} does not point at "
                                f"its answer text {text!r} (context has {context[start:start + len(text)]!r})"
                            )
                        fixed = reanchor(context, text, start)
                        if fixed is None:
                            lost += 1
                        else:
                            fixes.reanchored += 1
                            answers.append(fixed)
                    if lost:
                        if not answers:
                            fixes.skipped.append(qid)
                            continue
                        fixes.dropped.append(qid)
                    yield Example(qid, title, context, question, tuple(answers), is_impossible=bool(impossible))
        except DataError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"{where}: article {a_i}: not SQuAD format ({exc.__class__.__name__}: {exc})") from None


def _load_hub(split: str) -> list[Example]:
    try:
        import datasets
    except ImportError:
        raise DataError("--data squad needs the 'datasets' package (pip install 'qabridge[train]')") from None
    try:
        ds = datasets.load_dataset("rajpurkar/squad", split=split)
    except Exception as exc:  # the hub raises many unrelated types when offline
        raise DataError(
            f"could not load SQuAD from the hub ({exc.__class__.__name__}); pass a local SQuAD .json/.json.gz with --data"
        ) from None
    out = []
    for row in ds:
        ans = row["answers"]
        out.append(
            Example(
                row["id"], row["title"], row["context"], row["question"],
                tuple(Answer(t, int(s)) for t, s in zip(ans["text"], ans["answer_start"])),
            )
        )
    return out


def squad_dir() -> Path | None:
    """Where the full SQuAD v1.1 files are: ``QABRIDGE_SQUAD_DIR``, then ``../shared/data/squad``."""
    env = os.environ.get("QABRIDGE_SQUAD_DIR")
    candidates = [Path(env)] if env else []
    from qabridge.paths import REPO_ROOT

    candidates.append(REPO_ROOT.parent / "shared" / "data" / "squad")
    for c in candidates:
        if (c / "dev-v1.1.json.gz").exists() or (c / "dev-v1.1.json").exists():
            return c
    return None


def squad_file(name: str) -> Path | None:
    d = squad_dir()
    if d is None:
        return None
    for cand in (d / f"{name}-v1.1.json.gz", d / f"{name}-v1.1.json"):
        if cand.exists():
            return cand
    return None


def squad2_dev_file() -> Path | None:
    """The SQuAD 2.0 dev set (evaluation only): ``QABRIDGE_SQUAD2_DIR``, then ``../shared/data/squad2``."""
    env = os.environ.get("QABRIDGE_SQUAD2_DIR")
    from qabridge.paths import REPO_ROOT

    dirs = ([Path(env)] if env else []) + [REPO_ROOT.parent / "shared" / "data" / "squad2"]
    for d in dirs:
        for cand in (d / "dev-v2.0.json.gz", d / "dev-v2.0.json"):
            if cand.exists():
                return cand
    return None


def first_articles(examples: list[Example], n: int) -> set[str]:
    """The titles of the first ``n`` articles in file order: SQuAD 2.0 dev's threshold is tuned on
    its first 17 and reported on the rest (issue 13's split)."""
    return set(list(dict.fromkeys(e.title for e in examples))[:n])


def has_unanswerable(examples: list[Example]) -> bool:
    """Whether the data is scored with the SQuAD 2.0 metric (it holds unanswerable questions)."""
    return any(e.is_impossible for e in examples)
