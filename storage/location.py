"""Where a Zarr store lives: a local path or any fsspec URL."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import zarr

# zarr 3 warns that consolidated metadata is not yet part of the v3 spec; we use it
# knowingly (written once a stage has finished), so the warning is noise for users.
warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
# The store's writer lease (storage/lease.py) lives in `leases/`, beside the Zarr groups: zarr
# notices a folder that is no group of its and says so at every listing of the root.
warnings.filterwarnings("ignore", message="Object at leases is not recognized as a component of a Zarr hierarchy")


def is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def zarr_store(location: str, read_only: bool = False, storage_options: dict[str, Any] | None = None):
    """A zarr Store object for a local path or an fsspec URL."""
    if is_url(location):
        return zarr.storage.FsspecStore.from_url(location, storage_options=storage_options, read_only=read_only)
    path = Path(location.removeprefix("file://"))
    if not read_only:
        path.mkdir(parents=True, exist_ok=True)
    return zarr.storage.LocalStore(path, read_only=read_only)


def store_exists(location: str) -> bool:
    if is_url(location):
        import fsspec

        fs, path = fsspec.core.url_to_fs(location)
        return fs.exists(f"{path.rstrip('/')}/zarr.json")
    return (Path(location.removeprefix("file://")) / "zarr.json").is_file()


def list_sizes(location: str, prefix: str) -> dict[str, int]:
    """Every object under `prefix` of a store, as {key relative to the store: size in bytes}.

    One recursive listing (a directory walk; on object stores a paginated LIST), no reads.
    """
    prefix = prefix.strip("/")
    if is_url(location):
        import fsspec

        fs, root = fsspec.core.url_to_fs(location)
        try:
            found = fs.find(f"{root.rstrip('/')}/{prefix}", detail=True)
        except FileNotFoundError:
            return {}
        base = root.strip("/") + "/"  # some filesystems answer with a leading slash, some without
        return {name.strip("/").removeprefix(base): int(info.get("size") or 0) for name, info in found.items()
                if info.get("type", "file") == "file"}
    root = Path(location.removeprefix("file://"))
    sizes = {}
    for folder, _, files in os.walk(root / prefix):
        for name in files:
            path = Path(folder) / name
            try:
                sizes[path.relative_to(root).as_posix()] = path.stat().st_size
            except FileNotFoundError:  # removed while listing
                pass
    return sizes
