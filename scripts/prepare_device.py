"""Prepare .dev/ for scripts/device_train.sh (and device_abstain.sh): the offline base as fp16 safetensors, SQuAD and bitsandbytes.

The GPU machine reaches no registry and carries at most 64 MiB, so the base travels
as fp16 (about 45 MB) with its config and tokenizer files, the training set as xz (5.8 MB
against 7.8 MB as gz), and bitsandbytes (for QLoRA) as its Python files plus only the CUDA 13
libraries (the full wheel is 43 MB; torch wheels of this period are built for CUDA 13).
"""

from __future__ import annotations

import argparse
import gzip
import lzma
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from qabridge.paths import offline_base_dir  # noqa: E402
from qabridge.train.squad import squad_dir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--squad2", action="store_true",
                    help="also the SQuAD 2.0 dev set (evaluation only) for scripts/device_abstain.sh")
    ap.add_argument("--no-bitsandbytes", dest="bnb", action="store_false", help="skip QLoRA's bitsandbytes")
    ap.add_argument("--bge", action="store_true",
                    help="also bge-small-en-v1.5 as fp16 in two parts (.dev/bge-a, .dev/bge-b) for scripts/device_accurate.sh")
    args = ap.parse_args()
    src = offline_base_dir()
    if src is None:
        sys.exit("the offline base is not installed (scripts/setup.sh)")
    dev = Path(__file__).resolve().parent.parent / ".dev"
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
    shutil.copy2(sq / "dev-v1.1.json.gz", dev / "squad" / "dev-v1.1.json.gz")
    (dev / "squad" / "train-v1.1.json.gz").unlink(missing_ok=True)
    with gzip.open(sq / "train-v1.1.json.gz", "rb") as src_fh, lzma.open(dev / "squad" / "train-v1.1.json.xz", "wb", preset=9) as dst:
        shutil.copyfileobj(src_fh, dst)
    if args.squad2:
        v2 = sq.parent / "squad2" / "dev-v2.0.json.gz"
        if not v2.exists():
            sys.exit(f"{v2} not found")
        (dev / "squad2").mkdir(exist_ok=True)
        shutil.copy2(v2, dev / "squad2" / v2.name)
    if args.bge:
        pack_bge(dev)
    if args.bnb:
        pack_bitsandbytes(dev / "bitsandbytes.tar.xz")
    else:
        (dev / "bitsandbytes.tar.xz").unlink(missing_ok=True)
    total = sum(p.stat().st_size for p in dev.rglob("*") if p.is_file())
    print(f"prepared {dev}: {total / 2**20:.1f} MiB")


#: Bytes of bge's fp16 safetensors in the first part: .dev/bge-a alone fills most of one call's
#: 64 MiB carry (with the working tree); the rest travels with the data in the next call.
BGE_PART0 = 52 << 20


def pack_bge(dev: Path) -> None:
    """bge-small-en-v1.5 (fetched from Maven Central and converted by `qabridge bases`) as an fp16
    HF directory cut in two: its safetensors is ~63 MiB, too much for one carry beside the tree.
    scripts/device_accurate.sh joins the parts and checks the sha256 in bge-a/manifest.json."""
    import hashlib
    import json

    from qabridge.train.bases import ensure, lookup

    src = ensure(lookup("bge-small-en-v1.5"), log=print)
    a, b = dev / "bge-a", dev / "bge-b"
    for d in (a, b):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    state = load_file(str(src / "model.safetensors"))
    with tempfile.TemporaryDirectory() as tmp:
        whole = Path(tmp) / "model.safetensors"
        save_file({k: v.astype(np.float16) for k, v in state.items()}, str(whole))
        data = whole.read_bytes()
    (a / "model.part0").write_bytes(data[:BGE_PART0])
    (b / "model.part1").write_bytes(data[BGE_PART0:])
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "NOTICE"):
        if (src / name).exists():
            shutil.copy2(src / name, a / name)
    (a / "manifest.json").write_text(json.dumps({"model.safetensors": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                                                 "parts": ["bge-a/model.part0", "bge-b/model.part1"]}) + "\n")
    print(f"bge-small-en-v1.5 fp16: {len(data) / 2**20:.1f} MiB in {a} and {b}")


def pack_bitsandbytes(dest: Path, cuda: tuple[str, ...] = ("130", "132")) -> None:
    version = metadata.version("bitsandbytes")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", f"bitsandbytes=={version}", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp],
            check=True,
        )
        (wheel,) = Path(tmp).glob("bitsandbytes-*.whl")
        keep = {f"libbitsandbytes_cuda{v}.so" for v in cuda} | {"libbitsandbytes_cpu.so"}
        with zipfile.ZipFile(wheel) as zf, tarfile.open(dest, "w:xz") as tf:
            for info in zf.infolist():
                name = info.filename
                if not name.startswith("bitsandbytes/") or info.is_dir():
                    continue
                if Path(name).name.startswith("libbitsandbytes_") and Path(name).name not in keep:
                    continue
                member = tarfile.TarInfo(name)
                member.size = info.file_size
                with zf.open(info) as fh:
                    tf.addfile(member, fh)
    print(f"packed bitsandbytes {version} (CUDA {', '.join(cuda)}) into {dest}")


if __name__ == "__main__":
    main()
