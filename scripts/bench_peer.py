"""The peer: transformers 4.57.6 `pipeline("question-answering")`, in-process (runs in .venv-peer).

Reads a JSON job on stdin, prints one JSON result. Launched by scripts/bench.py.
"""

import json
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def main() -> None:
    job = json.load(sys.stdin)
    import torch
    import transformers
    from transformers import pipeline

    torch.set_num_threads(job.get("threads", 2))
    qa = pipeline("question-answering", model=job["model_dir"], tokenizer=job["model_dir"], device=-1)
    items = job["items"]
    for it in items[:5]:  # warm-up
        qa(question=it["question"], context=it["context"], max_seq_len=384, doc_stride=128, max_answer_len=30)
    lock = threading.Lock()  # one pipeline object, like one in-process user; torch itself is thread-safe

    def one(it):
        t0 = time.perf_counter()
        with lock:
            r = qa(question=it["question"], context=it["context"], max_seq_len=384, doc_stride=128, max_answer_len=30)
        return it["id"], r["answer"], r["start"], r["end"], time.perf_counter() - t0

    t0 = time.perf_counter()
    if job["clients"] == 1:
        res = [one(it) for it in items]
    else:
        with ThreadPoolExecutor(job["clients"]) as ex:
            res = list(ex.map(one, items))
    wall = time.perf_counter() - t0
    print(json.dumps({
        "transformers": transformers.__version__, "torch": torch.__version__, "wall_s": wall,
        "latencies": [r[4] for r in res], "answers": {r[0]: r[1] for r in res},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
