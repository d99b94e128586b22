"""Create the Ollama model from the exported Modelfile, over Ollama's HTTP API (no Ollama CLI).

Run by docker-compose.yml's `ollama-init` service, in the qabridge image (which holds
/models/Modelfile and the GGUF it names): uploads the GGUF as a blob, then creates the model
from it with the Modelfile's parameters and licence. Idempotent: an existing blob is not sent again.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from pathlib import Path

import httpx


def parse_modelfile(path: Path) -> tuple[Path, dict, str | None]:
    text = path.read_text()
    src = re.search(r"^FROM\s+(\S+)", text, re.M)
    if src is None:
        raise SystemExit(f"{path}: no FROM line")
    params = {k: (int(v) if v.isdigit() else v) for k, v in re.findall(r"^PARAMETER\s+(\S+)\s+(\S+)", text, re.M)}
    lic = re.search(r'^LICENSE\s+"""\n?(.*?)"""', text, re.M | re.S)
    return (path.parent / src.group(1)).resolve(), params, lic.group(1).strip() if lic else None


def main() -> int:
    host = os.environ.get("OLLAMA_HOST", "http://127.0.0.1:11434")
    host = host if "://" in host else "http://" + host
    name = os.environ.get("QABRIDGE_OLLAMA_MODEL", "bert-qa")
    gguf, params, lic = parse_modelfile(Path(os.environ.get("QABRIDGE_MODELFILE", "/models/Modelfile")))
    with httpx.Client(base_url=host, timeout=120) as http:
        for _ in range(120):  # Ollama may still be starting
            try:
                http.get("/api/version").raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            print(f"Ollama at {host} did not answer", file=sys.stderr)
            return 1
        digest = "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
        if http.head(f"/api/blobs/{digest}").status_code != 200:
            with gguf.open("rb") as f:
                http.post(f"/api/blobs/{digest}", content=f).raise_for_status()
        body = {"model": name, "files": {gguf.name: digest}, "parameters": params, "stream": False}
        if lic:
            body["license"] = lic
        r = http.post("/api/create", json=body)
        if r.status_code != 200:
            print(f"creating {name} failed: HTTP {r.status_code} {r.text[:300]}", file=sys.stderr)
            return 1
    print(f"created Ollama model {name} from {gguf.name} ({digest[:19]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
