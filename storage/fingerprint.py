"""Fingerprints: a stable hash of the inputs that decide a stored result.

A result is reused only when its stored fingerprint equals the one computed now.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

_file_hashes: dict[tuple[str, int, int], str] = {}
_file_hashes_lock = threading.Lock()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:32]


def file_sha256(path: Path) -> str:
    """sha256 of a file's content, cached per (path, size, mtime): each checkpoint or annotation
    file is read once per process."""
    path = Path(path)
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _file_hashes_lock:
        if key in _file_hashes:
            return _file_hashes[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    with _file_hashes_lock:
        _file_hashes[key] = digest.hexdigest()
    return _file_hashes[key]

