"""What a commit wrote, recorded so that later damage is found instead of read as zeros.

At commit every object under a group (its arrays' metadata and chunks; not the group's own
zarr.json, which holds the record) is read back and recorded as {key in the group: [bytes,
crc32]}. Zarr reads a missing chunk as the fill value, so only such a record tells a deleted
chunk from a chunk of zeros. Two levels of checking:

- "sizes": one listing of the store, no reads: finds missing, resized and unexpected objects
  (a deleted or truncated chunk, a half-copied store). Cheap enough for every run.
- "checksums": reads every recorded object and compares its crc32 too: also finds bytes
  changed in place (a bad disk, a corrupted copy). Reads the whole store.
"""

from __future__ import annotations

import zlib
from typing import Callable, Literal

ALGORITHM = "crc32"
Level = Literal["sizes", "checksums"]
LEVELS: tuple[Level, ...] = ("sizes", "checksums")
GROUP_METADATA = "zarr.json"
_TEMPORARY = ".partial"  # zarr's local store writes through temporary files with this suffix


def checksum(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _objects(prefix: str, sizes: dict[str, int]) -> dict[str, int]:
    """The group's own objects: keys under `prefix/`, relative to it, without the group's metadata."""
    head = prefix.strip("/") + "/"
    return {key[len(head):]: size for key, size in sizes.items()
            if key.startswith(head) and key[len(head):] != GROUP_METADATA and not key.endswith(_TEMPORARY)}


def make_record(prefix: str, sizes: dict[str, int], read: Callable[[str], bytes | None]) -> dict:
    """The record of a group just written: `sizes` is a listing of the store, `read(key)` an object's bytes."""
    objects = {}
    for name in sorted(_objects(prefix, sizes)):
        data = read(f"{prefix.strip('/')}/{name}")
        if data is not None:
            objects[name] = [len(data), checksum(data)]
    return {"algorithm": ALGORITHM, "objects": objects}


def _where(name: str) -> str:
    """'teacher.x/c/3/0' -> 'teacher.x: chunk c/3/0'; 'offsets/zarr.json' -> 'offsets: metadata'."""
    array, _, rest = name.partition("/")
    if not rest:
        return f"object {name}"
    return f"{array}: metadata" if rest == GROUP_METADATA else f"{array}: chunk {rest}"


def find_problems(record: dict, prefix: str, sizes: dict[str, int], level: Level,
                  read: Callable[[str], bytes | None] | None = None) -> list[str]:
    """What differs between a group's record and the store now; empty when it is intact."""
    if level not in LEVELS:
        raise ValueError(f"unknown verification level {level!r}; known: {LEVELS}")
    recorded = record.get("objects", {})
    present = _objects(prefix, sizes)
    problems = []
    for name, (size, crc) in recorded.items():
        if name not in present:
            problems.append(f"{_where(name)} missing")
        elif present[name] != size:
            problems.append(f"{_where(name)} has {present[name]} bytes, {size} when committed")
        elif level == "checksums":
            data = read(f"{prefix.strip('/')}/{name}") if read else None
            if data is None:
                problems.append(f"{_where(name)} missing")
            elif checksum(data) != crc:
                problems.append(f"{_where(name)} checksum differs from the commit's")
    problems += [f"{_where(name)} was not written by the commit" for name in present if name not in recorded]
    return problems
