"""Speed of LoRA training steps by window length (why long windows cost more than their tokens).

    .venv/bin/python benchmarks/experiments/train_window_lengths.py [--base bge-small-en-v1.5] [--batch 16]
        [--lengths 176,180,...,384] [--attn sdpa|eager] [--mask pad|ones]
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 .venv/bin/python benchmarks/experiments/train_window_lengths.py ...

LoRA r=32 on query/key/value/dense + span head, bf16 autocast, AdamW, 2 threads; random token ids;
with ``--mask pad`` half the windows end in 20 padding positions, as in length-grouped batches.
Two steps per length after one warm-up step; prints windows/s and tokens/s per length. The
numbers in docs/quality.md ("the allocator") come from this script under glibc's malloc and
under tcmalloc.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="bge-small-en-v1.5")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lengths", default="176,180,184,188,192,196,200,204,208,224,256,384")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--mask", default="pad", choices=["pad", "ones"])
    a = ap.parse_args()
    import torch
    from peft import LoraConfig, get_peft_model

    from qabridge.core.machine import cpu_info
    from qabridge.train.allocator import in_use
    from qabridge.train.model import load_qa_model, resolve_base

    torch.set_num_threads(2)
    model = load_qa_model(resolve_base(a.base))
    model.set_attn_implementation(a.attn)
    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, target_modules=["query", "key", "value", "dense"],
                                             modules_to_save=["qa_outputs"]))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    b = a.batch

    def step(ids, pos, mask) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids),
                        start_positions=pos, end_positions=pos)
        out.loss.backward()
        opt.step()
        opt.zero_grad()

    print(f"{cpu_info().describe()}, allocator {in_use()}, base {a.base}, attention {a.attn}, {b} windows a step")
    ids = torch.randint(1000, 20000, (b, 160), generator=g)
    step(ids, torch.randint(1, 140, (b,), generator=g), torch.ones_like(ids))
    for _ in range(a.rounds):
        for t in (int(x) for x in a.lengths.split(",")):
            ids = torch.randint(1000, 20000, (b, t), generator=g)
            pos = torch.randint(1, t - 20, (b,), generator=g)
            mask = torch.ones_like(ids)
            if a.mask == "pad":
                mask[: b // 2, t - 20:] = 0
            t0 = time.perf_counter()
            step(ids, pos, mask)
            step(ids, pos, mask)
            s = time.perf_counter() - t0
            print(f"  {t} tokens: {2 * b / s:.2f} windows/s, {2 * b * t / s:.0f} tokens/s", flush=True)


if __name__ == "__main__":
    main()
