"""Prepare .dev/ for scripts/device_train.sh: the offline base as fp16 safetensors and SQuAD.

The GPU machine reaches no registry and carries at most 64 MiB, so the base travels
as fp16 (about 45 MB) with its config and tokenizer files.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from qabridge.paths import REPO_ROOT, offline_base_dir  # noqa: E402
from qabridge.train.squad import squad_dir  # noqa: E402


def main() -> None:
    src = offline_base_dir()
    if src is None:
        sys.exit("the offline base is not installed (scripts/setup.sh)")
    dev = REPO_ROOT / ".dev"
    base = dev / "base"
    base.mkdir(parents=True, exist_ok=True)
    state = load_file(str(src / "model.safetensors"))
    save_file({k: v.astype(np.float16) for k, v in state.items()}, str(base / "model.safetensors"))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy2(src / name, base / name)
    sq = squad_dir()
    if sq is None:
        sys.exit("SQuAD v1.1 not found (QABRIDGE_SQUAD_DIR or ../shared/data/squad)")
    (dev / "squad").mkdir(exist_ok=True)
    for name in ("train-v1.1.json.gz", "dev-v1.1.json.gz"):
        shutil.copy2(sq / name, dev / "squad" / name)
    total = sum(p.stat().st_size for p in dev.rglob("*") if p.is_file())
    print(f"prepared {dev}: {total / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
