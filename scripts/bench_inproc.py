"""qabridge in-process: the Python API (``qabridge.pipeline()``, the default model on the engine
``qabridge serve`` chose for this CPU), asked the way bench_peer.py asks the transformers pipeline.

Reads a JSON job line on stdin (``clients``, ``warmup``), then answers the bursts of questions
that follow, one JSON line each (bench_child.serve_turns). Launched by
scripts/bench.py in its own process, so its peak RSS is its own. With several clients the threads
share one pipeline built with ``contexts=2`` (the wide ONNX Runtime session for a call alone, the
narrow one for calls that meet), as ``qabridge serve`` serves by default.
"""

import json
import sys

from bench_child import serve_turns  # beside this file


def main() -> None:
    import qabridge

    job = json.loads(sys.stdin.readline())
    with qabridge.pipeline(contexts=2 if job["clients"] > 1 else 1) as qa:
        def ask(it):
            return qa(question=it["question"], context=it["context"])["answer"]

        serve_turns(job, ask, {"engine": qa._engine.name})


if __name__ == "__main__":
    main()
