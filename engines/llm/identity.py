"""Which base model an adapter belongs to: a content hash, and the metadata file carrying it.

A LoRA adapter only means something on the exact weights it was trained on; one trained on
another base with the same shapes loads without complaint and serves nonsense. So
`galactic-train lora` writes `galactic_adapter.json` beside PEFT's files with the base
model's content hash, and the engine compares it with the served model's on LoadAdapter.

The hash covers what defines the network: `config.json` and every `*.safetensors` file of
the model dir, by name and bytes. It is taken from the files, not from loaded tensors, so a
quantized load of the same files has the same identity as the full-precision one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

METADATA_FILE = "galactic_adapter.json"
METADATA_FORMAT = "galactic-adapter/1"
_CHUNK = 1 << 20


def model_content_hash(model_dir: Path) -> str:
    """`sha256:<hex>` over config.json and the *.safetensors files of a HF model dir."""
    model_dir = Path(model_dir)
    files = [model_dir / "config.json", *sorted(model_dir.glob("*.safetensors"))]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def read_metadata(adapter_dir: Path) -> dict[str, Any] | None:
    """The adapter's galactic metadata, or None when it has none (an adapter from elsewhere).

    Raises ValueError when the file exists but is not ours or is malformed.
    """
    path = Path(adapter_dir) / METADATA_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != METADATA_FORMAT:
        raise ValueError(f"{METADATA_FILE} is not in format {METADATA_FORMAT}")
    if not isinstance(data.get("base_model_hash"), str):
        raise ValueError(f"{METADATA_FILE} lacks base_model_hash")
    return data
