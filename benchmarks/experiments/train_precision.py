"""LoRA training steps on the CPU in fp32 and in bf16 autocast, taking turns (qabridge train --precision).

    .venv/bin/python benchmarks/experiments/train_precision.py [--base bge-small-en-v1.5] [--rounds 2]

LoRA r=32 on query/key/value/dense and the span head, as the default recipe; steps of 16 random
windows of 180 tokens (about a length-grouped SQuAD batch) with AdamW, 2 threads; 4 steps per
precision per round after one warm-up step each. Prints windows/s per round and the CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default=None, help="named base or HF directory (default: the offline MiniLM-L6)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=180)
    a = ap.parse_args()
    import torch
    from peft import LoraConfig, get_peft_model

    from qabridge.core.machine import cpu_info
    from qabridge.train.model import load_qa_model, resolve_base

    torch.set_num_threads(2)
    model = load_qa_model(resolve_base(a.base))
    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, target_modules=["query", "key", "value", "dense"],
                                             modules_to_save=["qa_outputs"]))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (a.batch, a.tokens), generator=g)
    pos = torch.randint(1, a.tokens, (a.batch,), generator=g)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids),
                        start_positions=pos, end_positions=pos)
        out.loss.backward()
        opt.step()
        opt.zero_grad()

    print(f"{cpu_info().describe()}, base {a.base or 'all-minilm-l6-v2'}, LoRA r=32, {a.batch} x {a.tokens} tokens a step")
    for bf16 in (False, True):
        step(bf16)
    for r in range(a.rounds):
        for bf16 in ((False, True) if r % 2 == 0 else (True, False)):
            t0 = time.perf_counter()
            for _ in range(4):
                step(bf16)
            print(f"  round {r + 1} {'bf16' if bf16 else 'fp32'}: {4 * a.batch / (time.perf_counter() - t0):.2f} windows/s",
                  flush=True)


if __name__ == "__main__":
    main()
