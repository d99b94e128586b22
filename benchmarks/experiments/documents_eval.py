"""`documents` mode on SQuAD: the first 30 distinct dev paragraphs as documents, their first 20 questions.

    .venv/bin/python benchmarks/experiments/documents_eval.py MODEL.gguf|MODEL.onnx [--top-documents default,3,all] [serve options...]

Prints, per setting, how many questions were answered (F1 > 0.5), how often the answer came from
the paragraph that holds it, the seconds and the embedder that ranked the passages.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from qabridge.train.squad import load_squad, squad_file
    from tests.helpers import documents_answered, first_paragraphs, start_server

    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--top-documents", default="default,3,all")
    args, serve_args = ap.parse_known_args()
    paras, qs = first_paragraphs(load_squad(squad_file("dev")))
    tmp = ROOT / ".cache" / "documents-eval"
    tmp.mkdir(parents=True, exist_ok=True)
    s = start_server(Path(args.model), tmp, *serve_args)
    try:
        for k in args.top_documents.split(","):
            # default: the bridge's own choice (every passage when <= 8, else the 5 most similar).
            extra = {} if k == "default" else {"top_documents": 200} if k == "all" else {"top_documents": int(k)}
            t0 = time.time()
            ok, bodies = documents_answered(s.url, paras, qs, **extra)
            right = sum(b["document"] == paras.index(e.context) for b, e in zip(bodies, qs))
            b = bodies[-1]
            print(f"top_documents={k}: answered {ok}/20, right passage {right}/20, read {len(b['ranking'])} passages, "
                  f"{time.time() - t0:.1f} s, embedder {b.get('embedder')}")
    finally:
        s.stop()


if __name__ == "__main__":
    main()
