"""The search page in a real browser (issue 14, item 4): `prvr serve` on a small trained world,
headless Chromium types a query about a known event, sees ranked videos with their moments,
timelines, thumbnails and a player at the moment, and a refused query's message. Full-page
screenshots land in the run's folder (runs/<name>/screenshots/).

The known event is one the student was trained on (the first training video's first event);
the check is that its video ranks in the better half of the twelve, where chance puts it at 6.5
on average. Needs the system Chromium and Playwright, as tests/test_ui_browser.py; missing either
fails this test, it never skips."""

from __future__ import annotations

import httpx
import pytest

from configs.schema import load_config
from prvr.ui_snapshots import BrowserMissing, chromium_path, is_png
from storage.runs import RunPaths
from tests.search_world import EVENTS, free_port, query_text, running_server, trained_world

pytestmark = pytest.mark.slow
TIMEOUT_MS = 60_000


def browser_executable() -> str:
    try:
        executable = chromium_path()
        import playwright.sync_api  # noqa: F401
    except BrowserMissing as e:
        pytest.fail(str(e), pytrace=False)
    except ImportError as e:
        pytest.fail(f"Playwright is missing ({e}); install the dev extra: .venv/bin/pip install -e '.[dev]'",
                    pytrace=False)
    return executable


def shown_results(page) -> list[dict]:
    return page.eval_on_selector_all("li.result", """items => items.map(li => ({
        video_id: li.dataset.videoId, rank: Number(li.dataset.rank),
        moment: [Number(li.dataset.momentStart), Number(li.dataset.momentEnd)],
        text: li.innerText,
        thumbnail_ok: (img => img !== null && img.complete && img.naturalWidth > 0)(li.querySelector("img")),
        curve_points: li.querySelector("svg.timeline polyline").getAttribute("points").trim().split(/\\s+/).length,
        moment_band: li.querySelector("svg.timeline rect.moment") !== null,
        player: (v => v && v.getAttribute("src"))(li.querySelector("video")),
    }))""")


def test_the_search_page_ranks_a_known_event_high(tmp_path):
    from playwright.sync_api import sync_playwright

    executable = browser_executable()
    config_path = trained_world(tmp_path)
    cfg = load_config(config_path)
    shots = RunPaths.of(cfg.runs_dir, cfg.name).root / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    known_video, _, known_events = EVENTS[0]
    colour, start, end = known_events[0]
    text = query_text(colour)

    with running_server(config_path, free_port()) as (url, _), sync_playwright() as playwright:
        expected = httpx.get(f"{url}/search", params={"q": text, "k": len(EVENTS)}).json()["results"]
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=["--disable-dev-shm-usage", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            page.wait_for_function("document.getElementById('about').textContent.includes('12 videos')")
            page.fill("#q", text)
            page.fill("#k", str(len(EVENTS)))
            page.click("#go")
            page.wait_for_selector("body[data-state=results]")
            page.wait_for_function("[...document.querySelectorAll('li.result img')].every(i => i.complete)")
            results = shown_results(page)

            # Ranked videos with their moments, as the API ranks them.
            assert [r["rank"] for r in results] == list(range(1, len(EVENTS) + 1))
            assert [r["video_id"] for r in results] == [e["video_id"] for e in expected]
            for shown, answer in zip(results, expected):
                assert shown["moment"] == pytest.approx(answer["moment"])
                assert f"moment {answer['moment'][0]:.1f} s - {answer['moment'][1]:.1f} s" in shown["text"]
                assert 0 <= shown["moment"][0] <= shown["moment"][1] <= 12.0
                assert shown["thumbnail_ok"] and shown["moment_band"]
                assert shown["curve_points"] == len(answer["times"])
                assert shown["player"] == f"/video/{shown['video_id']}#t={answer['moment'][0]:.2f}"
            known_rank = next(r["rank"] for r in results if r["video_id"] == known_video)
            assert known_rank <= len(EVENTS) // 2, f"{known_video} ({colour}, {start}-{end} s) ranked {known_rank}"
            assert f"12 of 12 videos for “{text}”" in page.inner_text("#status")

            # The player of the best video starts at its moment.
            first = page.locator("li.result video").first
            first.scroll_into_view_if_needed()
            page.wait_for_function("document.querySelector('li.result video').readyState >= 1")
            position = page.evaluate("document.querySelector('li.result video').currentTime")
            assert position == pytest.approx(expected[0]["moment"][0], abs=0.3)
            page.screenshot(path=str(shots / "search.png"), full_page=True)

            # A query that cannot be searched for says why, and the URL keeps the last query.
            page.fill("#q", "   ")
            page.click("#go")
            page.wait_for_selector("body[data-state=error]")
            assert page.inner_text("#error") == "the query text is empty"
            assert page.locator("li.result").count() == 0
            page.screenshot(path=str(shots / "search-refused.png"), full_page=True)
        finally:
            browser.close()
    assert is_png(shots / "search.png") and is_png(shots / "search-refused.png", min_bytes=1000)
