"""Prepare .dev/ for the device scripts (device_train.sh, device_abstain.sh, device_accurate.sh): the offline base as fp16 safetensors, SQuAD, bge-small and bitsandbytes.

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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--squad2", action="store_true",
                    help="also the SQuAD 2.0 dev set (evaluation only) for scripts/recipes/device_abstain.sh")
    ap.add_argument("--no-bitsandbytes", dest="bnb", action="store_false", help="skip QLoRA's bitsandbytes")
    ap.add_argument("--bge", action="store_true",
                    help="also bge-small-en-v1.5 (matrices bf16, packed: .dev/bge, ~43 MiB), for scripts/recipes/device_accurate.sh")
    ap.add_argument("--unpack-bge", metavar="DIR", type=Path, default=None,
                    help="on the device: rebuild .dev/bge's safetensors into DIR (an HF directory) and exit")
    args = ap.parse_args()
    if args.unpack_bge is not None:
        unpack_bge(Path(__file__).resolve().parents[2] / ".dev" / "bge", args.unpack_bge)
        return
    # Here, not at the top: --unpack-bge runs on the device, where the tree is not installed.
    from qabridge.paths import offline_base_dir
    from qabridge.train.squad import squad_dir

    src = offline_base_dir()
    if src is None:
        sys.exit("the offline base is not installed (scripts/setup.sh)")
    dev = Path(__file__).resolve().parents[2] / ".dev"
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
    report_carries(dev)


#: What one device call may carry: the working tree (tracked and untracked files) and the carried paths.
CARRY_LIMIT = 64 << 20
#: The carries the device scripts document (scripts/recipes/device_accurate.sh, device_abstain.sh, device_train.sh).
CARRIES = {"device_accurate.sh train|abstain": ("bge", "squad"), "device_accurate.sh distill": ("base", "squad2"),
           "device_train.sh, device_abstain.sh": ("base", "squad", "squad2")}


def report_carries(dev: Path) -> None:
    """Each documented call's size against the limit, so an over-full carry shows here, not on the device."""
    root = dev.parent
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.split(b"\0")
    files = [root / p.decode() for p in listed if p]
    tree = sum(f.stat().st_size for f in files if f.is_file())  # a deleted, still-listed file: not sent
    for call, parts in CARRIES.items():
        if not all((dev / p).exists() for p in parts):
            continue
        size = tree + sum(f.stat().st_size for p in parts for f in (dev / p).rglob("*") if f.is_file())
        flag = "ok" if size <= CARRY_LIMIT else "OVER THE LIMIT"
        print(f"  {call}: tree {tree / 2**20:.1f} + .dev/{{{','.join(parts)}}} = {size / 2**20:.1f} of 64 MiB: {flag}")


#: The packed safetensors of .dev/bge (see pack_bge).
PLANES = "model.planes.xz"


def write_planes(data: bytes, path: Path) -> int:
    """xz a safetensors file with its tensor bytes split into planes: the header, then every second
    byte from the second (the high bytes of 16-bit words: sign and exponent, which compress), then
    the low bytes. Returns the header's length (8 + its JSON), which read_planes needs."""
    head = 8 + int.from_bytes(data[:8], "little")
    if (len(data) - head) % 2:
        raise ValueError("tensor data of odd length: not 16/32-bit tensors")
    body = np.frombuffer(data, dtype=np.uint8, offset=head).reshape(-1, 2)
    with lzma.open(path, "wb", preset=9 | lzma.PRESET_EXTREME) as fh:
        fh.write(data[:head])
        fh.write(np.ascontiguousarray(body[:, 1]).tobytes())
        fh.write(np.ascontiguousarray(body[:, 0]).tobytes())
    return head


def read_planes(path: Path, head: int, n: int) -> bytes:
    """The n bytes write_planes packed into path (head: the header length it returned)."""
    half = (n - head) // 2
    with lzma.open(path, "rb") as fh:
        header = fh.read(head)
        hi = np.frombuffer(fh.read(half), dtype=np.uint8)
        lo = np.frombuffer(fh.read(half), dtype=np.uint8)
    body = np.empty((half, 2), dtype=np.uint8)
    body[:, 0], body[:, 1] = lo, hi
    return header + body.tobytes()


def pack_bge(dev: Path) -> None:
    """bge-small-en-v1.5 (fetched from Maven Central and converted by `qabridge bases`) as an HF
    directory in .dev/bge, small enough to travel in one carry beside the tree and the data: its
    matrices as bf16 (what the training's bf16 autocast multiplies with anyway: the rounding is the
    same; fp16 would be 63 MiB), 1-D tensors as fp32, and the file's bytes split into two planes
    (high bytes, mostly sign and exponent, then low bytes) and xz'd: ~43 MiB.
    `python3 scripts/recipes/prepare_device.py --unpack-bge DIR` rebuilds the file on the device and checks
    its sha256 (manifest.json)."""
    import hashlib
    import json

    import torch
    from safetensors.torch import save_file as save_torch

    from qabridge.train.bases import ensure, lookup

    src = ensure(lookup("bge-small-en-v1.5"), log=print)
    out = dev / "bge"
    for d in (out, dev / "bge-a", dev / "bge-b"):  # bge-a, bge-b: an earlier layout (fp16 in two carries)
        shutil.rmtree(d, ignore_errors=True)
    out.mkdir(parents=True)

    state = load_file(str(src / "model.safetensors"))
    with tempfile.TemporaryDirectory() as tmp:
        whole = Path(tmp) / "model.safetensors"
        save_torch({k: torch.from_numpy(v).to(torch.bfloat16 if v.ndim == 2 else torch.float32) for k, v in state.items()},
                   str(whole))
        data = whole.read_bytes()
    head = write_planes(data, out / PLANES)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "NOTICE"):
        if (src / name).exists():
            shutil.copy2(src / name, out / name)
    (out / "manifest.json").write_text(json.dumps({"model.safetensors": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                                                   "header_bytes": head}) + "\n")
    packed = (out / PLANES).stat().st_size
    print(f"bge-small-en-v1.5 bf16: {len(data) / 2**20:.1f} MiB packed into {packed / 2**20:.1f} MiB in {out}")


def unpack_bge(src: Path, dst: Path) -> None:
    """Rebuild model.safetensors from pack_bge's planes (src) into the HF directory dst; exits 1 on a
    checksum mismatch. Needs only numpy and the standard library (it runs on the device)."""
    import hashlib
    import json

    manifest = json.loads((src / "manifest.json").read_text())
    head, n = manifest["header_bytes"], manifest["bytes"]
    data = read_planes(src / PLANES, head, n)
    if hashlib.sha256(data).hexdigest() != manifest["model.safetensors"]:
        sys.exit(f"bge sha256 mismatch after unpacking {src}")
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in (PLANES, "manifest.json"):
            shutil.copy2(f, dst / f.name)
    (dst / "model.safetensors").write_bytes(data)
    print(f"bge sha256 ok: {dst / 'model.safetensors'} ({n / 2**20:.1f} MiB)")


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
