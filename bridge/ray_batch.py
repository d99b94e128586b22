"""Batch QA over many passages on Ray Data: a pool of actors, the model loaded once per actor.

    qabridge batch --data passages.jsonl --questions questions.txt --out answers/ [--address auto]

Input (``--data``), one row per passage:

- ``.jsonl`` (one JSON object a line) or ``.parquet``: columns ``id`` (string or integer, unique)
  and ``context``; plus ``question`` when no ``--questions`` file is given (one question per row).
- a SQuAD ``.json``/``.json.gz``: every question with its paragraph, ids the SQuAD ids (what
  ``qabridge eval --predictions`` writes for the same file).

``--questions`` (optional): ``.txt`` (one question a line; ids ``q1``, ``q2``, ... in order) or
``.jsonl`` (``{"id": ..., "question": ...}``): every passage is asked every question; the answer's
id is ``<passage id>::<question id>``.

Output: ``DIR/answers.jsonl``, one line per answer, appended as batches finish:
``{"id", "answer", "start", "end", "score", "no_answer_probability", "error"}`` (``error`` is empty
unless the row could not be asked, e.g. a missing context). Running again with the same ``--out``
skips the ids already there (a partial last line from a killed run is dropped first): a resumed
run writes every id exactly once. Answers are those of ``qabridge eval`` (the same
``predict_examples`` over the same llama.cpp engine): the best span of every window of the context.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qabridge.errors import DataError, OutputUnwritable, UsageError

from .ray_runtime import assigned_cpus, init_ray, require_ray, threads_for

ANSWERS_FILE = "answers.jsonl"
ID_SEP = "::"
#: Batch jobs hold passages and answers in the object store; still far below Ray's 30% of RAM.
BATCH_OBJECT_STORE_MB = 256


@dataclass
class BatchSummary:
    out: str
    written: int  # answers this run wrote
    already_done: int  # answers found in --out before this run (skipped)
    total: int  # answers in the file now
    duplicates: int  # rows Ray delivered for an id already written (not written again)
    errors: int  # rows answered with an error instead of a span
    actors: int
    seconds: float


# -- inputs -------------------------------------------------------------------------------------
def load_questions(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(id, question) pairs from a .txt (one a line) or .jsonl ({"id", "question"}) file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such questions file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read ({exc})") from None
    out: list[tuple[str, str]] = []
    if p.suffix == ".jsonl":
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{p}:{n}: not JSON ({exc})") from None
            if not isinstance(row, dict) or not isinstance(row.get("question"), str):
                raise DataError(f"{p}:{n}: expected an object with a string 'question'")
            out.append((str(row.get("id", f"q{len(out) + 1}")), row["question"]))
    elif p.suffix == ".txt":
        out = [(f"q{i}", q.strip()) for i, q in enumerate((x for x in lines if x.strip()), 1)]
    else:
        raise DataError(f"{p}: questions must be a .txt (one a line) or .jsonl file")
    if not out:
        raise DataError(f"{p}: no questions")
    for qid, q in out:
        if not q.strip():
            raise DataError(f"{p}: question {qid} is empty")
    ids = [q for q, _ in out]
    if len(set(ids)) != len(ids):
        raise DataError(f"{p}: question ids repeat")
    return out


def check_data_path(data: str | os.PathLike) -> Path:
    """The data file, checked before Ray starts: it exists and has a format we read."""
    p = Path(data)
    if not p.exists():
        raise DataError(f"{p}: no such data file")
    if not (p.is_dir() or p.name.lower().endswith((".jsonl", ".parquet", ".json", ".json.gz", ".json.xz"))):
        raise DataError(f"{p}: --data must be .jsonl, .parquet (file or folder) or a SQuAD .json")
    return p


def open_dataset(data: str | os.PathLike, *, has_questions: bool):
    """The passages as a Ray Dataset, their columns checked before any actor starts."""
    import ray

    p = check_data_path(data)
    name = p.name.lower()
    if name.endswith((".json", ".json.gz", ".json.xz")):
        from qabridge.train.squad import load_squad

        if has_questions:
            raise UsageError("a SQuAD file carries its questions: --questions goes with .jsonl/.parquet passages")
        rows = [{"id": e.id, "question": e.question, "context": e.context} for e in load_squad(p, split="validation")]
        if not rows:
            raise DataError(f"{p}: no questions")
        return ray.data.from_items(rows)
    try:
        if name.endswith(".jsonl"):
            ds = ray.data.read_json(str(p), lines=True)
        else:
            ds = ray.data.read_parquet(str(p))
        names = set(ds.schema().names)
    except DataError:
        raise
    except Exception as exc:  # pyarrow's parse errors arrive wrapped by Ray
        raise DataError(f"{p}: not readable ({exc.__class__.__name__}: {str(exc).splitlines()[0][:300]})") from None
    need = {"id", "context"} | (set() if has_questions else {"question"})
    if need - names:
        raise DataError(f"{p}: missing column(s) {', '.join(sorted(need - names))} (has {', '.join(sorted(names))})")
    if has_questions and "question" in names:
        raise UsageError(f"{p}: rows carry their own 'question'; drop --questions or the column")
    return ds


# -- output -------------------------------------------------------------------------------------
def read_done(out: Path) -> set[str]:
    """Ids already answered in ``out``; a partial last line (a killed run) is cut off first."""
    f = out / ANSWERS_FILE
    if not f.exists():
        return set()
    done: set[str] = set()
    good = 0
    with open(f, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break  # the interrupted write of a killed run
            try:
                done.add(str(json.loads(line)["id"]))
            except (ValueError, KeyError, TypeError):
                break
            good += len(line)
    if good != f.stat().st_size:
        with open(f, "r+b") as fh:
            fh.truncate(good)
    return done


# -- the actor ----------------------------------------------------------------------------------
def batch_pipeline(model: str, threads: int):
    """The pipeline ``qabridge eval --model`` builds, with this actor's threads."""
    from .engine_select import file_pipeline

    return file_pipeline(model, n_threads=threads)


class Answerer:
    """A Ray Data actor: loads the model once, answers batches of passages."""

    def __init__(self, model: str, questions: list[tuple[str, str]] | None, skip, threads: int | None = None):
        import ray

        self.threads = threads or threads_for(assigned_cpus())
        self.pipe = batch_pipeline(model, self.threads)
        self.questions = questions
        self.skip: set[str] = ray.get(skip) if isinstance(skip, ray.ObjectRef) else set(skip or ())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from qabridge.train.evaluate import predict_examples
        from qabridge.train.squad import Example

        ids, ctxs = batch["id"], batch["context"]
        rows = []  # (id, question, context or None when unusable)
        for i, pid in enumerate(ids):
            pid = _as_id(pid)
            qs = self.questions or [(None, batch["question"][i])]
            for qid, q in qs:
                rid = pid if qid is None else f"{pid}{ID_SEP}{qid}"
                if rid not in self.skip:
                    rows.append((rid, q, ctxs[i]))
        good = [Example(id=r, title="", context=c, question=q) for r, q, c in rows
                if isinstance(c, str) and isinstance(q, str)]
        preds = predict_examples(self.pipe, good) if good else {}
        out = {k: [] for k in ("id", "answer", "start", "end", "score", "no_answer_probability", "error")}
        for rid, _q, c in rows:
            p = preds.get(rid)
            err = "" if p is not None else ("context is not a string" if not isinstance(c, str) else "question is not a string")
            p = p or {"text": "", "start": 0, "end": 0, "score": 0.0, "null": 1.0}
            for k, v in (("id", rid), ("answer", p["text"]), ("start", p["start"]), ("end", p["end"]),
                         ("score", p["score"]), ("no_answer_probability", p["null"]), ("error", err)):
                out[k].append(v)
        return {"id": np.array(out["id"], dtype=object), "answer": np.array(out["answer"], dtype=object),
                "start": np.array(out["start"], dtype=np.int64), "end": np.array(out["end"], dtype=np.int64),
                "score": np.array(out["score"], dtype=np.float64),
                "no_answer_probability": np.array(out["no_answer_probability"], dtype=np.float64),
                "error": np.array(out["error"], dtype=object)}


def _as_id(x) -> str:
    """Ids as text: 7 and "7" are the same passage (JSON readers may give either)."""
    if isinstance(x, (float, np.floating)) and float(x).is_integer():
        return str(int(x))
    return str(x.item() if isinstance(x, np.generic) else x)


# -- the job ------------------------------------------------------------------------------------
def run_batch(data: str | os.PathLike, out: str | os.PathLike, *, model: str | os.PathLike | None = None,
              questions: str | os.PathLike | None = None, address: str | None = None, actors: int | None = None,
              cpus_per_actor: float = 0.5, threads_per_actor: int | None = None, batch_size: int = 256,
              progress: bool = False, log_fn: Callable[[str], None] | None = None,
              on_batch: Callable[[int], None] | None = None) -> BatchSummary:
    """Answer every row of ``data`` into ``out`` (see the module doc); local Ray when no ``address``.

    ``cpus_per_actor`` stays below 1 by default: on a 2-CPU cluster two 1-CPU actors left no CPU
    for Ray Data's read tasks and the job hung without an error (measured); 0.5 each did not."""
    ray = require_ray()
    t0 = time.perf_counter()
    if cpus_per_actor <= 0:
        raise UsageError(f"--cpus-per-actor must be > 0, got {cpus_per_actor:g}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    from qabridge.core.builtin import lookup_builtin

    builtin = lookup_builtin(model)
    if builtin is not None:  # None (the default) or a built-in model's name: its q8_0 GGUF, built once here
        from qabridge.export.run import default_model

        model = default_model("q8_0", adapter=builtin.adapter(), log=log_fn)
    model = Path(model).resolve()
    if not model.is_file():
        raise DataError(f"{model}: no such model file (with --address it must be readable on every node)")
    from qabridge.core.model_file import ModelFile

    if model.suffix != ".onnx":
        ModelFile(model)  # a wrong file fails here, in one line, not in every actor
    qs = load_questions(questions) if questions else None
    check_data_path(data)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        done = read_done(out)
        fh = open(out / ANSWERS_FILE, "a", encoding="utf-8")
    except OSError as exc:
        raise OutputUnwritable(f"{out}: cannot write ({exc})") from None
    started = init_ray(address, object_store_mb=BATCH_OBJECT_STORE_MB, log_fn=log_fn)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = progress
        ds = open_dataset(data, has_questions=qs is not None)
        n_actors = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        skip = ray.put(done) if done else None
        answered = ds.map_batches(
            Answerer, batch_size=batch_size, batch_format="numpy", num_cpus=cpus_per_actor,
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            fn_constructor_kwargs={"model": str(model), "questions": qs, "skip": skip, "threads": threads_per_actor},
        )
        written = dups = errors = 0
        already = len(done)
        with fh:
            for b in answered.iter_batches(batch_size=None, batch_format="numpy"):
                lines = []
                for i, rid in enumerate(b["id"]):
                    rid = str(rid)
                    if rid in done:
                        dups += 1
                        continue
                    done.add(rid)
                    errors += bool(b["error"][i])
                    lines.append(json.dumps({
                        "id": rid, "answer": str(b["answer"][i]), "start": int(b["start"][i]), "end": int(b["end"][i]),
                        "score": float(b["score"][i]), "no_answer_probability": float(b["no_answer_probability"][i]),
                        "error": str(b["error"][i])}, ensure_ascii=False) + "\n")
                # One write and flush per batch: a kill leaves at most one partial line (read_done cuts it).
                fh.write("".join(lines))
                fh.flush()
                written += len(lines)
                if on_batch:
                    on_batch(written)
    except (UsageError, DataError):
        raise
    except Exception as exc:  # Ray's own failures (a dead cluster, a task that kept failing)
        from qabridge.errors import ServiceError

        raise ServiceError(f"batch job failed: {exc.__class__.__name__}: {str(exc).strip().splitlines()[-1][:400]}"
                           f" (answers so far are in {out / ANSWERS_FILE}; run again to resume)") from None
    finally:
        if started:
            ray.shutdown()
    return BatchSummary(out=str(out / ANSWERS_FILE), written=written, already_done=already, total=len(done),
                        duplicates=dups, errors=errors, actors=n_actors, seconds=round(time.perf_counter() - t0, 2))


def summary_dict(s: BatchSummary) -> dict:
    return asdict(s)
