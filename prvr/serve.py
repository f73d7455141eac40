"""`prvr serve`: a trained run's search over HTTP, and the page that shows it.

    GET /                       the page: a query box, ranked videos, each with a timeline of its
                                frame scores (the moment marked), a thumbnail of the best frame
                                and a player that starts at the moment
    GET /search?q=TEXT&k=10     JSON: the ranked videos with score, moment and per-frame scores
    GET /info                   JSON: the run, its index (videos, splits, branches)
    GET /thumbnail/ID?t=SECONDS JPEG of video ID's frame at that time, decoded from the video
    GET /video/ID               the video file itself (byte ranges, so players can seek)

Files are reached by video id only, through the manifest (stages/manifest.py keeps every
path inside the dataset root); nothing in a request is ever used as a path. Bad requests get
a 4xx with {"error": "..."}. The server binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import io
import logging
import math
import mimetypes
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

log = logging.getLogger("prvr.serve")
PAGE = Path(__file__).with_name("static") / "search.html"
DEFAULT_PORT = 8765
MAX_TOP = 100
THUMBNAIL_SIDE = 160  # short side of a thumbnail, pixels
THUMBNAILS_KEPT = 512


class BadRequest(ValueError):
    """A request the server refuses with a 400 and this message."""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _one(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise BadRequest(f"give {name} once, got it {len(values)} times")
    return values[0] if values else None


def parse_top(raw: str | None, videos: int) -> int:
    if raw is None or raw == "":
        return min(10, videos)
    try:
        top = int(raw)
    except ValueError:
        raise BadRequest(f"k must be a whole number from 1 to {MAX_TOP}, got {raw[:40]!r}") from None
    if not 1 <= top <= MAX_TOP:
        raise BadRequest(f"k must be a whole number from 1 to {MAX_TOP}, got {top}")
    return min(top, videos)


def parse_time(raw: str | None, duration: float) -> float:
    try:
        seconds = float(raw) if raw is not None else math.nan
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 <= seconds <= duration + 1.0):
        raise BadRequest(f"t must be a time in seconds within the video (0 to {duration:.1f}), got {str(raw)[:40]!r}")
    return min(seconds, duration)


class Thumbnails:
    """JPEG frames decoded from the videos, the last THUMBNAILS_KEPT kept in memory."""

    def __init__(self, kept: int = THUMBNAILS_KEPT):
        self._cache: OrderedDict[tuple[str, float], bytes] = OrderedDict()
        self._kept = kept
        self._lock = threading.Lock()

    def get(self, video_id: str, path: Path, seconds: float) -> bytes:
        from PIL import Image

        from stages.decode import decode_frame_at

        key = (video_id, round(seconds, 3))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        frame = decode_frame_at(path, seconds, short_side=THUMBNAIL_SIDE)
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=85)
        data = buffer.getvalue()
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self._kept:
                self._cache.popitem(last=False)
        return data


def create_app(searcher, video_files: VideoFiles, run_name: str = "") -> FastAPI:
    """The app over a loaded `stages.search.Searcher` and the manifest's video files."""
    from stages.decode import DecodeError
    from stages.search import QueryError

    app = FastAPI(title=f"prvr search {run_name}".strip(), docs_url=None, redoc_url=None, openapi_url=None)
    index = searcher.index
    row_of = {vid: i for i, vid in enumerate(index.video_ids)}
    page = PAGE.read_text(encoding="utf-8")
    thumbnails = Thumbnails()
    # One query at a time: the scoring pass already uses every core.
    scoring = threading.Lock()

    reachable = video_files.reachable

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, error: BadRequest) -> JSONResponse:
        return _error(400, str(error))

    @app.get("/", response_class=HTMLResponse)
    def home() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/info")
    def info() -> dict[str, Any]:
        return {"run": run_name, "videos": len(index.video_ids), "frames": index.record["frames"],
                "splits": index.record["inputs"]["splits"], "branches": index.branches,
                "built_at": index.record["built_at"], "max_top": MAX_TOP}

    @app.get("/search")
    def search(request: Request) -> JSONResponse:
        text = _one(request, "q")
        if text is None:
            raise BadRequest("give the query as q, e.g. /search?q=a+man+opens+the+door")
        top = parse_top(_one(request, "k"), len(index.video_ids))
        started = time.perf_counter()
        try:
            with scoring:
                hits = searcher.search(text, top)
        except QueryError as e:
            raise BadRequest(str(e)) from None
        results = []
        for hit in hits:
            item = hit.as_dict(timeline=True)
            there = reachable(hit.video_id) is not None
            item["thumbnail"] = f"/thumbnail/{quote(hit.video_id)}?t={hit.best_time:.3f}" if there else None
            item["video"] = f"/video/{quote(hit.video_id)}" if there else None
            results.append(item)
        return JSONResponse({"query": text.strip(), "k": top, "videos": len(index.video_ids),
                             "took_ms": round(1000 * (time.perf_counter() - started), 1), "results": results})

    def known_file(video_id: str) -> Path:
        if video_id not in row_of:
            raise LookupError(f"no video {video_id[:80]!r} in this index")
        path = reachable(video_id)
        if path is None:
            raise LookupError(f"the file of video {video_id!r} is not reachable")
        return path

    @app.get("/thumbnail/{video_id}")
    def thumbnail(video_id: str, request: Request) -> Response:
        try:
            path = known_file(video_id)
        except LookupError as e:
            return _error(404, str(e))
        seconds = parse_time(_one(request, "t"), float(index.durations[row_of[video_id]]))
        try:
            data = thumbnails.get(video_id, path, seconds)
        except DecodeError as e:
            return _error(422, f"the frame at {seconds:.2f}s of video {video_id!r} does not decode: {e}")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/video/{video_id}")
    def video(video_id: str) -> Response:
        try:
            path = known_file(video_id)
        except LookupError as e:
            return _error(404, str(e))
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media_type)  # answers Range requests

    return app


class VideoFiles:
    """video id -> file, for every video of the manifest (its paths checked to stay inside the dataset
    root); a file that went missing since is unreachable, not an error."""

    def __init__(self, root: Path):
        from stages.manifest import load_manifest, outside_folders

        manifest = load_manifest(root, check_files=False)
        self.root = manifest.root
        self._allowed = outside_folders(self.root, [])
        self._paths = {v.video_id: v.path for v in manifest.videos}

    def reachable(self, video_id: str) -> Path | None:
        """The file of a manifest video when it is there and, links followed now, still inside the root
        (or a folder the root allows): a file swapped for a link since the manifest was read stays refused."""
        path = self._paths.get(video_id)
        if path is None or not path.is_file():
            return None
        real = path.resolve()
        if real.is_relative_to(self.root) or any(real.is_relative_to(folder) for folder in self._allowed):
            return path
        log.warning("refusing %s: it now leads outside the dataset root (to %s)", path, real)
        return None


def serve_forever(searcher, files: VideoFiles, run_name: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                  echo=print) -> None:
    """Serve a loaded searcher until interrupted."""
    import uvicorn

    searcher.search("warm up", 1)  # the first query pays for lazy initialisation, not a user
    app = create_app(searcher, files, run_name)
    echo(f"searching {searcher.video_count} videos of run {run_name} at http://{host}:{port}/ (Ctrl+C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
