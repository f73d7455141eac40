"""Fingerprints: a stable hash of the inputs that decide a stored result.

A result is reused only when its stored fingerprint equals the one computed now.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:32]


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_identity(path: str) -> dict[str, Any]:
    """Size, mtime-independent content hash of a (checkpoint) file; hashed once per process."""
    import os

    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()
    return {"file": os.path.basename(path), "size": st.st_size, "sha256": _FILE_HASHES[key]}
