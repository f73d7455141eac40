"""`prvr serve` (issue 14, item 3): the page, GET /search as JSON, thumbnails decoded from the videos,
the video files with byte ranges, clear 4xx for bad requests, no path from a request ever opened,
and the server bound to 127.0.0.1. A real trained run; the app through HTTP (Starlette's test client),
and once as the command itself."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from configs.schema import load_config
from prvr.serve import MAX_TOP, VideoFiles, create_app
from stages.search import Searcher
from tests.search_world import EVENTS, free_port, query_text, running_server, trained_world

COLOUR_RGB = {"red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255)}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return trained_world(tmp_path_factory.mktemp("serve-world"))


@pytest.fixture(scope="module")
def searcher(world):
    opened = Searcher.open(load_config(world))
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def client(world, searcher):
    cfg = load_config(world)
    with TestClient(create_app(searcher, VideoFiles(cfg.dataset.root), cfg.name)) as c:
        yield c


def dataset_copy(world: Path, tmp_path: Path) -> Path:
    """The world's manifest and videos copied, for tests that remove or swap files."""
    root = load_config(world).dataset.root
    shutil.copytree(root, tmp_path / "copy", ignore=shutil.ignore_patterns("*.zarr"))
    return tmp_path / "copy"


def test_the_page_and_the_index_info(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for part in ('id="q"', 'id="k"', 'id="results"', "/search?", "timeline", 'element("video"'):
        assert part in page.text
    info = client.get("/info").json()
    assert info["videos"] == len(EVENTS) and info["splits"] == ["train", "test"] and info["max_top"] == MAX_TOP


def test_search_answers_json_with_moments_and_timelines(client, searcher):
    answer = client.get("/search", params={"q": query_text("red"), "k": 5})
    assert answer.status_code == 200
    body = answer.json()
    assert body["query"] == query_text("red") and body["k"] == 5 and body["videos"] == len(EVENTS)
    direct = searcher.search(query_text("red"), 5)
    assert [r["video_id"] for r in body["results"]] == [h.video_id for h in direct]
    for result, hit in zip(body["results"], direct):
        assert result["rank"] == hit.rank and result["score"] == pytest.approx(hit.score)
        assert result["moment"] == pytest.approx(list(hit.moment))
        assert len(result["frame_scores"]) == len(result["times"]) == len(hit.times)
        assert result["thumbnail"] == f"/thumbnail/{hit.video_id}?t={hit.best_time:.3f}"
        assert result["video"] == f"/video/{hit.video_id}"
    # k defaults to 10, at most the number of videos
    assert len(client.get("/search", params={"q": "red"}).json()["results"]) == 10
    assert len(client.get("/search", params={"q": "red", "k": 50}).json()["results"]) == len(EVENTS)


@pytest.mark.parametrize("query, message", [
    ("", "give the query as q"),
    ("q=", "the query text is empty"),
    ("q=%20%20", "the query text is empty"),
    ("q=" + "x" * 501, "the query is 501 characters long; at most 500"),
    ("q=a%00door", "the query is not text: it holds the control or unassigned character U+0000"),
    ("q=a%FFdoor", "the query is not text: it holds U+FFFD, the mark of bytes that were not UTF-8"),
    ("q=%21%3F", "the query holds no letters or digits"),
    ("q=red&q=blue", "give q once, got it 2 times"),
    ("q=red&k=0", "k must be a whole number from 1 to 100, got 0"),
    ("q=red&k=101", "k must be a whole number from 1 to 100, got 101"),
    ("q=red&k=ten", "k must be a whole number from 1 to 100, got 'ten'"),
])
def test_bad_queries_get_a_clear_400(client, query, message):
    answer = client.get(f"/search?{query}")
    assert answer.status_code == 400
    assert message in answer.json()["error"]


def mean_colour(jpeg: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and min(image.size) == 160
    return np.asarray(image.convert("RGB"), dtype=np.float64).mean(axis=(0, 1))


def test_thumbnails_are_the_videos_frames_at_the_time_asked(client):
    vid, _, events = EVENTS[0]
    for colour, start, end in events:
        if colour not in COLOUR_RGB:
            continue
        answer = client.get(f"/thumbnail/{vid}", params={"t": (start + end) / 2})
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
        assert np.abs(mean_colour(answer.content) - COLOUR_RGB[colour]).max() < 40
    between = client.get(f"/thumbnail/{vid}", params={"t": 5.5}).content  # dark grey between the events
    assert mean_colour(between).max() < 60
    # The thumbnail a search names shows the best frame of that video.
    result = client.get("/search", params={"q": query_text("red"), "k": 1}).json()["results"][0]
    assert client.get(result["thumbnail"]).status_code == 200


@pytest.mark.parametrize("path, status, message", [
    ("/thumbnail/v00?t=-1", 400, "t must be a time in seconds within the video"),
    ("/thumbnail/v00?t=nan", 400, "t must be a time in seconds within the video"),
    ("/thumbnail/v00?t=99", 400, "t must be a time in seconds within the video (0 to 12.0)"),
    ("/thumbnail/v00", 400, "t must be a time in seconds"),
    ("/thumbnail/nope?t=1", 404, "no video 'nope' in this index"),
    ("/video/nope", 404, "no video 'nope' in this index"),
    ("/video/videos.jsonl", 404, "no video 'videos.jsonl' in this index"),
    ("/video/..%2Fvideos.jsonl", 404, ""),
    ("/video/%2E%2E", 404, ""),
])
def test_requests_for_other_files_or_times_are_refused(client, path, status, message):
    answer = client.get(path)
    assert answer.status_code == status
    if message:
        assert message in answer.json()["error"]
    assert not answer.headers["content-type"].startswith("video/")


def test_video_files_are_served_with_byte_ranges(client, world):
    video_file = load_config(world).dataset.root / "videos" / "v03.mp4"
    whole = client.get("/video/v03")
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    assert whole.content == video_file.read_bytes()
    part = client.get("/video/v03", headers={"Range": "bytes=100-299"})
    assert part.status_code == 206 and part.content == video_file.read_bytes()[100:300]
    assert part.headers["content-range"] == f"bytes 100-299/{video_file.stat().st_size}"


def test_missing_files_and_links_out_of_the_root_are_not_served(world, searcher, tmp_path):
    root = dataset_copy(world, tmp_path)
    cfg = load_config(world)
    with TestClient(create_app(searcher, VideoFiles(root), cfg.name)) as c:
        (root / "videos" / "v01.mp4").unlink()  # gone after the server started
        outside = tmp_path / "outside.mp4"
        shutil.copy(cfg.dataset.root / "videos" / "v02.mp4", outside)
        (root / "videos" / "v02.mp4").unlink()
        (root / "videos" / "v02.mp4").symlink_to(outside)  # swapped for a link out of the root
        for vid in ("v01", "v02"):
            assert c.get(f"/video/{vid}").status_code == 404
            assert "is not reachable" in c.get(f"/thumbnail/{vid}", params={"t": 1}).json()["error"]
        results = c.get("/search", params={"q": "red", "k": len(EVENTS)}).json()["results"]
        by_id = {r["video_id"]: r for r in results}
        assert by_id["v01"]["video"] is None and by_id["v01"]["thumbnail"] is None
        assert by_id["v02"]["video"] is None and by_id["v03"]["video"] == "/video/v03"
        assert c.get("/video/v03").status_code == 200


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) of sockets listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_prvr_serve_listens_on_loopback_only_by_default(world):
    import httpx

    port = free_port()
    with running_server(world, port) as (url, output):
        answer = httpx.get(f"{url}/search", params={"q": query_text("blue"), "k": 3})
        assert answer.status_code == 200 and len(answer.json()["results"]) == 3
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else
    assert f"searching {len(EVENTS)} videos of run colours at http://127.0.0.1:{port}/ (Ctrl+C stops)" in output


# ---- thumbnails' frames: stages.decode.decode_frame_at ------------------------------------------
@pytest.mark.parametrize("name, codec", [("gray.mp4", "libx264"), ("gray.mkv", "av1")])
def test_the_frame_shown_at_a_time_is_decoded_by_either_backend(tmp_path, name, codec):
    """decord for h264; AV1, which decord's FFmpeg cannot decode, through the system ffmpeg. Each frame's
    grey level tells which frame came back."""
    from stages.decode import decode_frame_at, decode_video
    from synth.test_cards import frame_gray_level, make_video

    video = make_video(tmp_path / name, 4, fps=10, codec=codec, pattern="frame_gray")
    sampled = decode_video(video, fps=2.0, max_frames=128, short_side=None)
    for time_s, index, frame in zip(sampled.plan.times, sampled.plan.indices, sampled.samples()):
        shown = decode_frame_at(video, float(time_s))
        np.testing.assert_array_equal(shown, frame)  # a stored frame time gives back that frame
        assert abs(float(shown.mean()) - frame_gray_level(int(index))) < 4
    between = decode_frame_at(video, 1.27)  # shown from 1.2 s to 1.3 s: frame 12
    assert abs(float(between.mean()) - frame_gray_level(12)) < 4
    assert abs(float(decode_frame_at(video, 60.0).mean()) - frame_gray_level(39)) < 4  # past the end: the last
    assert decode_frame_at(video, 0.0, short_side=60).shape[:2] == (60, 80)


def test_playlists_named_like_videos_are_never_read_for_a_thumbnail(tmp_path):
    from stages.decode import DecodeError, decode_frame_at

    playlist = tmp_path / "v.mp4"
    playlist.write_text("#EXTM3U\n#EXTINF:1,\n/etc/hostname\n")
    with pytest.raises(DecodeError, match="an HLS playlist"):
        decode_frame_at(playlist, 0.5)
    with pytest.raises(ValueError, match="finite number >= 0"):
        decode_frame_at(playlist, float("nan"))
