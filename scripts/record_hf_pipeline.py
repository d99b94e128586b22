"""Record what transformers 4.57.6's `pipeline("question-answering")` answers on the shipped model.

    .venv/bin/python scripts/record_hf_pipeline.py      # -> tests/fixtures/hf_pipeline_4.57.6.json

Runs in .venv-peer (set up by scripts/bench.py) over the merged fp32 model (token-type row 1 equal
to row 0, so the peer's 0/1 segments compute what qabridge's all-zero segments do). Records, for
each question of the dev sample plus questions its contexts do not answer, the pipeline's top 3
with and without `handle_impossible_answer`, with `align_to_words=False` (qabridge's offsets are
the tokens'). tests/test_api.py compares `qabridge.pipeline` with these outputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
OUT = ROOT / "tests" / "fixtures" / "hf_pipeline_4.57.6.json"

#: Questions the dev sample's contexts do not answer (asked against its first paragraph).
UNANSWERABLE = [
    "What is the capital of Japan?",
    "Who painted the Mona Lisa?",
    "How many moons does Mars have?",
    "What is the boiling point of water in Kelvin?",
    "Who wrote the novel War and Peace?",
]

PEER = r'''
import json, sys
from transformers import pipeline
job = json.load(sys.stdin)
qa = pipeline("question-answering", model=job["model_dir"], tokenizer=job["model_dir"], device=-1)
out = []
for it in job["items"]:
    rec = {"question": it["question"], "context": it["context"]}
    for hia in (False, True):
        r = qa(question=it["question"], context=it["context"], top_k=3, handle_impossible_answer=hia,
               max_answer_len=30, max_seq_len=384, doc_stride=128, max_question_len=64, align_to_words=False)
        rec["impossible" if hia else "plain"] = [{k: (float(v) if k == "score" else v) for k, v in a.items()} for a in r]
    out.append(rec)
import transformers
print(json.dumps({"transformers": transformers.__version__, "records": out}))
'''


def main() -> None:
    from bench import merged_model_dir, setup_peer

    from qabridge.train.squad import load_squad

    examples = load_squad(ROOT / "tests" / "fixtures" / "squad_dev_sample.json")
    items = [{"question": e.question, "context": e.context} for e in examples]
    items += [{"question": q, "context": examples[0].context} for q in UNANSWERABLE]
    py = setup_peer()
    job = {"model_dir": str(merged_model_dir()), "items": items}
    r = subprocess.run([str(py), "-c", PEER], input=json.dumps(job), capture_output=True, text=True,
                       env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, check=False)
    if r.returncode != 0:
        raise SystemExit(f"peer failed: {r.stderr[-3000:]}")
    data = json.loads(r.stdout.strip().splitlines()[-1])
    data["model"] = "models/lora merged (fp32), token-type row 1 = row 0"
    data["options"] = {"top_k": 3, "max_answer_len": 30, "max_seq_len": 384, "doc_stride": 128,
                       "max_question_len": 64, "align_to_words": False}
    OUT.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT} ({len(data['records'])} questions, transformers {data['transformers']})")


if __name__ == "__main__":
    main()
