"""Readers for the file formats of the MS-SL / DL-DKD / GMMFormer feature releases.

    TextData/{c}{train,val,test}.caption.txt   `<video_id>#enc#<k> <sentence>` per line
    TextData/roberta_{c}_query_feat.hdf5       query id -> (tokens, D) float
    TextData/clip_ViT_B_32_{c}_query_feat.hdf5 query id -> (D,) or (1, D): the CLIP sentence
    FeatureData/<feature>/feature.bin          float32 little-endian rows, `rows x dims`
    FeatureData/<feature>/shape.txt            "rows dims"
    FeatureData/<feature>/id.txt               row names, whitespace separated, in row order
    FeatureData/<feature>/video2frames.txt     a Python dict literal: video id -> [row names]
    FeatureData/new_clip_vit_32_{c}_vid_features.hdf5  video id -> (frames, D): the CLIP frames

Every error names the file and the line or id. Nothing here evaluates code: the dict literal is
read with `ast.literal_eval`, which accepts literals only.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prvr.errors import UserError, problem_list

MAX_LISTED = 20  # ids or lines of a release file named in one message


class ReleaseFormatError(UserError, ValueError):
    """A release file that cannot be read as its format says; the message names file and line or id."""


def _listed(items: list[str], limit: int = MAX_LISTED) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


# ---- captions -----------------------------------------------------------------
@dataclass(frozen=True)
class Caption:
    query_id: str
    video_id: str
    text: str


def video_of_query(query_id: str) -> str:
    """The release's query ids are `<video_id>#enc#<k>` (or `<video_id>#<k>`)."""
    return query_id.split("#", 1)[0]


def read_captions(path: Path) -> list[Caption]:
    """All captions of one split file; every bad line is reported at once."""
    captions: list[Caption] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            lines = list(f)
        except UnicodeDecodeError as e:
            raise ReleaseFormatError(f"{path}: not UTF-8 text ({e})") from None
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            problems.append(f"{path.name}:{n}: expected `<video_id>#enc#<k> <sentence>`, got {line[:80]!r}")
            continue
        query_id, text = parts
        if "#" not in query_id or not video_of_query(query_id):
            problems.append(f"{path.name}:{n}: query id {query_id!r} has no `<video_id>#` prefix")
            continue
        if query_id in seen:
            problems.append(f"{path.name}:{n}: query id {query_id!r} repeats line {seen[query_id]}")
            continue
        seen[query_id] = n
        captions.append(Caption(query_id, video_of_query(query_id), text.strip()))
    if problems:
        raise ReleaseFormatError(problem_list(f"{path}: {len(problems)} bad line(s)", problems, MAX_LISTED))
    if not captions:
        raise ReleaseFormatError(f"{path}: no captions")
    return captions


# ---- BigFile --------------------------------------------------------------------
class BigFile:
    """Row-addressable float32 features: `feature.bin` read through a memory map, never whole."""

    def __init__(self, folder: Path):
        self.folder = folder
        shape_file, id_file, bin_file = folder / "shape.txt", folder / "id.txt", folder / "feature.bin"
        for f in (shape_file, id_file, bin_file):
            if not f.is_file():
                raise ReleaseFormatError(f"{f}: missing (a BigFile folder holds feature.bin, id.txt, shape.txt)")
        fields = shape_file.read_text().split()
        if len(fields) != 2 or not all(x.isdigit() for x in fields):
            raise ReleaseFormatError(f"{shape_file}:1: expected \"rows dims\", got {' '.join(fields)[:80]!r}")
        self.rows, self.dims = int(fields[0]), int(fields[1])
        if self.dims < 1:
            raise ReleaseFormatError(f"{shape_file}:1: dims must be positive, got {self.dims}")
        # The reference reader decodes ids as ISO-8859-1; any byte string then maps to a name.
        names = id_file.read_bytes().decode("iso-8859-1").split()
        if len(names) != self.rows:
            raise ReleaseFormatError(f"{id_file}: {len(names)} ids, but {shape_file} says {self.rows} rows")
        expected = self.rows * self.dims * 4
        actual = bin_file.stat().st_size
        if actual != expected:
            what = "truncated" if actual < expected else "longer than its shape"
            raise ReleaseFormatError(f"{bin_file}: {actual} bytes, {what}: {shape_file} says {self.rows} x "
                                     f"{self.dims} float32 = {expected} bytes")
        self.index: dict[str, int] = {}
        dupes = []
        for i, name in enumerate(names):
            if name in self.index:
                dupes.append(name)
            self.index[name] = i
        if dupes:
            raise ReleaseFormatError(f"{id_file}: repeated ids: {_listed(dupes)}")
        self.size_bytes = actual
        self._bin = bin_file

    def read(self, names: list[str]) -> np.ndarray:
        """Rows by name, in the order given, as float32 (n, dims)."""
        try:
            rows = np.fromiter((self.index[n] for n in names), dtype=np.int64, count=len(names))
        except KeyError as e:
            raise ReleaseFormatError(f"{self.folder / 'id.txt'}: no row named {e.args[0]!r}") from None
        # Plain reads of contiguous runs (a video's rows usually are one run), not a memory map:
        # the process then holds only what it reads, and its memory stays what it seems.
        out = np.empty((len(rows), self.dims), dtype=np.float32)
        row_bytes = self.dims * 4
        with open(self._bin, "rb") as f:
            i = 0
            while i < len(rows):
                j = i + 1
                while j < len(rows) and rows[j] == rows[j - 1] + 1:
                    j += 1
                f.seek(int(rows[i]) * row_bytes)
                out[i:j] = np.frombuffer(f.read((j - i) * row_bytes), dtype="<f4").reshape(j - i, self.dims)
                i = j
        return out


def read_video2frames(path: Path) -> dict[str, list[str]]:
    """video id -> row names; the file is a dict literal (the reference code `eval`s it; we never do)."""
    if not path.is_file():
        raise ReleaseFormatError(f"{path}: missing")
    text = path.read_text(encoding="utf-8")
    fast = _scan_dict_of_string_lists(text)
    if fast is not None:
        return _checked_video2frames(fast, path)
    try:  # anything the scanner did not expect: the full literal parser, for a precise error
        value = ast.literal_eval(text)
    except (SyntaxError, ValueError) as e:
        line = getattr(e, "lineno", None)
        where = f"{path}:{line}" if line else str(path)
        raise ReleaseFormatError(f"{where}: not a dict literal of video id -> list of frame ids "
                                 f"({type(e).__name__}: {getattr(e, 'msg', e)})") from None
    if not isinstance(value, dict):
        raise ReleaseFormatError(f"{path}: expected a dict literal, got {type(value).__name__}")
    return _checked_video2frames(value, path)


def _checked_video2frames(value: dict, path: Path) -> dict[str, list[str]]:
    bad = [str(k) for k, v in value.items()
           if not isinstance(k, str) or not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v)]
    if bad:
        raise ReleaseFormatError(f"{path}: entries that are not `video_id: [frame ids]`: {_listed(bad)}")
    empty = [k for k, v in value.items() if not v]
    if empty:
        raise ReleaseFormatError(f"{path}: videos without frames: {_listed(empty)}")
    return {k: list(v) for k, v in value.items()}


_TOKEN = re.compile(r"\s+|'([^'\\\n]*)'|\"([^\"\\\n]*)\"|([{}\[\]:,])|(.)", re.S)


def _scan_dict_of_string_lists(text: str) -> dict | None:
    """`{'vid': ['f1', ...], ...}` read token by token: ~10x faster than ast.literal_eval on TVR's
    50 MB file and without its syntax tree in memory. None when the text holds anything else
    (escapes, tuples, comments...): the caller then uses the full literal parser."""
    tokens = []
    for m in _TOKEN.finditer(text):
        if m.group(4) is not None:
            return None
        if m.group(1) is not None or m.group(2) is not None:
            tokens.append(("s", m.group(1) if m.group(1) is not None else m.group(2)))
        elif m.group(3) is not None:
            tokens.append((m.group(3), None))
    out: dict[str, list[str]] = {}
    i, n = 0, len(tokens)

    def take(kind: str) -> str | None:
        nonlocal i
        if i >= n or tokens[i][0] != kind:
            raise ValueError
        i += 1
        return tokens[i - 1][1]

    try:
        take("{")
        while i < n and tokens[i][0] != "}":
            key = take("s")
            take(":")
            take("[")
            items = []
            while tokens[i][0] != "]":
                items.append(take("s"))
                if tokens[i][0] == ",":  # adjacent strings without a comma would concatenate in Python
                    i += 1
                elif tokens[i][0] != "]":
                    raise ValueError
            take("]")
            out[key] = items
            if i < n and tokens[i][0] == ",":
                i += 1
            elif i < n and tokens[i][0] != "}":
                raise ValueError
        take("}")
    except (ValueError, IndexError):
        return None
    return out if i == n else None


# ---- HDF5 (optional dependency) ---------------------------------------------------
def open_hdf5(path: Path):
    try:
        import h5py
    except ImportError:
        raise ReleaseFormatError(f"{path}: reading HDF5 needs h5py: pip install 'prvr[releases]'") from None
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise ReleaseFormatError(f"{path}: not a readable HDF5 file ({e})") from None


class Hdf5Rows:
    """An HDF5 file of one dataset per id (the releases' layout), read id by id."""

    def __init__(self, path: Path, alternate_ids: bool = False):
        self.path = path
        self.file = open_hdf5(path)
        # DL-DKD's CLIP query files name some queries `<vid>#<k>` instead of `<vid>#enc#<k>`.
        self._alternate = alternate_ids

    def key_of(self, item_id: str) -> str | None:
        if item_id in self.file:
            return item_id
        if self._alternate and "#enc#" in item_id:
            alt = item_id.replace("#enc#", "#")
            if alt in self.file:
                return alt
        return None

    def missing(self, ids: list[str]) -> list[str]:
        return [i for i in ids if self.key_of(i) is None]

    def read(self, item_id: str) -> np.ndarray:
        key = self.key_of(item_id)
        if key is None:
            raise ReleaseFormatError(f"{self.path}: no dataset for id {item_id!r}")
        node = self.file[key]
        if not hasattr(node, "shape"):
            raise ReleaseFormatError(f"{self.path}: {key!r} is a group, expected a dataset")
        return np.asarray(node[...], dtype=np.float32)

    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def close(self) -> None:
        self.file.close()


# ---- the reference's resampling rule ------------------------------------------------
def mean_resample(features: np.ndarray, max_len: int) -> np.ndarray:
    """Uniformly cut n rows into max_len segments and average each (MS-SL's rule); unchanged when n <= max_len."""
    n = len(features)
    if n <= max_len:
        return np.asarray(features, dtype=np.float32)
    bounds = np.minimum(np.round(np.arange(max_len + 1) / max_len * n).astype(np.int64), n - 1)
    out = np.empty((max_len, features.shape[1]), dtype=np.float32)
    for i in range(max_len):
        s, e = bounds[i], bounds[i + 1]
        out[i] = features[s:e].mean(axis=0) if s < e else features[s]
    return out


def l2_normalise(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    return (x / (np.linalg.norm(x, axis=-1, keepdims=True) + eps)).astype(np.float32)
