"""Where a Zarr store lives: a local path or any fsspec URL."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import zarr

# zarr 3 warns that consolidated metadata is not yet part of the v3 spec; we use it
# knowingly (written once a stage has finished), so the warning is noise for users.
warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")


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
