"""Screenshots of a flow run in the Prefect UI, taken by headless Chromium.

`plan_pages` asks the Prefect API what a run holds (its subflows, their task runs and
artifacts) and turns it into UI pages, each with the texts the page must show once it has
rendered; `take_snapshots` opens each page, waits until those texts are on screen (the UI
is a single-page app: it fills in after load), saves a full-page PNG, and returns what the
page showed. The browser is the system Chromium (Debian's `chromium` package), driven by
Playwright without Playwright's own browser download.

    pages = plan_pages("http://127.0.0.1:4200/api", flow_run_id)
    shots = take_snapshots("http://127.0.0.1:4200", pages, run_folder / "screenshots")
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from prvr.errors import UserError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# The UI lists runs and artifacts ten to a page; names beyond that are not expected on screen.
UI_PAGE_SIZE = 10
# An element that holds the page's own content (the side bar is outside it).
CONTENT = ".app-router-view"


class BrowserMissing(UserError, RuntimeError):
    """No usable Chromium or no Playwright: the message says how to install them."""


@dataclass(frozen=True)
class UIPage:
    name: str  # file stem of the screenshot
    path: str  # relative to the UI's base URL
    expect: tuple[str, ...]  # texts that must be on screen once the page has rendered
    tab: str | None = None  # a tab of the page to click first ("Task Runs"); a fresh load ignores ?tab=


@dataclass(frozen=True)
class Snapshot:
    page: UIPage
    file: Path
    text: str  # the page's visible text when the screenshot was taken
    missing: tuple[str, ...] = field(default=())  # expected texts that never appeared


def chromium_path() -> str:
    """The system Chromium: $PRVR_CHROMIUM, else the first of CHROMIUM_NAMES on PATH."""
    configured = os.environ.get("PRVR_CHROMIUM")
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            raise BrowserMissing(f"PRVR_CHROMIUM={configured} is not an executable file")
        return configured
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise BrowserMissing(f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}): install it with "
                         "`sudo apt-get install -y chromium` (`make install` does), or set PRVR_CHROMIUM")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "page"


def _artifact_texts(artifact: Any) -> tuple[str, ...]:
    texts = [artifact.key] if artifact.key else []
    if artifact.type == "table" and isinstance(artifact.data, str) and artifact.data.startswith("["):
        rows = json.loads(artifact.data)
        if rows and isinstance(rows[0], dict):
            texts += [str(k) for k in rows[0]]  # the column headers
    elif artifact.type == "progress":
        texts.append("Progress")
    if artifact.description and artifact.type != "markdown":
        texts.append(artifact.description.splitlines()[0].strip())
    return tuple(t for t in texts if t)


def plan_pages(api_url: str, flow_run_id: UUID | str, max_artifacts: int = 30) -> list[UIPage]:
    """The pages that show run `flow_run_id`: its graph, its subflows (recursively), each
    flow run's task runs and artifacts, and each artifact's own page."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import (
        ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterParentFlowRunId, LogFilter,
        LogFilterFlowRunId, TaskRunFilter, TaskRunFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort, LogSort, TaskRunSort

    pages: list[UIPage] = []
    artifacts: list[Any] = []
    with SyncPrefectClient(api_url) as client:
        flow_names: dict[UUID, str] = {}

        def flow_name(flow_id: UUID) -> str:
            if flow_id not in flow_names:
                flow_names[flow_id] = client.read_flow(flow_id).name
            return flow_names[flow_id]

        def visit(run: Any, label: str) -> None:
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])),
                sort=FlowRunSort.START_TIME_ASC)
            parents_of_children = {c.parent_task_run_id for c in children}
            tasks = [t for t in client.read_task_runs(
                task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run.id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC) if t.id not in parents_of_children]
            produced = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])),
                sort=ArtifactSort.CREATED_DESC)
            path = f"/runs/flow-run/{run.id}"
            # The run's page opens on its logs: wait for the first line to arrive.
            first_log = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), limit=1,
                                         sort=LogSort.TIMESTAMP_ASC)
            log_line = tuple(line[:60] for log in first_log for line in log.message.strip().splitlines()[:1])
            pages.append(UIPage(label, path, (run.name, flow_name(run.flow_id)) + log_line))
            if children:
                shown = children[-UI_PAGE_SIZE:]  # newest first on screen
                pages.append(UIPage(f"{label}-subflows", path, (f"{len(children)} Flow run",) + tuple(
                    t for c in shown for t in (flow_name(c.flow_id), c.name)), tab="Subflow Runs"))
            if tasks:
                names = tuple(t.name for t in tasks) if len(tasks) <= UI_PAGE_SIZE else ()
                pages.append(UIPage(f"{label}-tasks", path, (f"{len(tasks)} Task run",) + names, tab="Task Runs"))
            if produced:
                keys = tuple(dict.fromkeys(a.key for a in produced if a.key))
                pages.append(UIPage(f"{label}-artifacts", path, keys[:UI_PAGE_SIZE], tab="Artifacts"))
                artifacts.extend(produced)
            for child in children:
                visit(child, f"{label}-{_slug(flow_name(child.flow_id))}")

        root = client.read_flow_run(UUID(str(flow_run_id)))
        visit(root, _slug(flow_name(root.flow_id)))
    for artifact in artifacts[:max_artifacts]:
        pages.append(UIPage(f"artifact-{_slug(artifact.key or str(artifact.id))}-{str(artifact.id)[:8]}",
                            f"/artifacts/artifact/{artifact.id}", _artifact_texts(artifact)))
    return pages


def _visible_text(page: Any) -> str:
    scope = page.locator(CONTENT)
    return scope.first.inner_text() if scope.count() else page.inner_text("body")


_ALL_SHOWN = """([selector, texts]) => {
  const el = document.querySelector(selector) || document.body;
  const shown = el.innerText || "";
  return texts.every((t) => shown.includes(t));
}"""


# The UI scrolls inside its own panes, so a "full page" screenshot would stop at the window's
# height: this measures how tall the window must be for every pane to show all it holds.
_CONTENT_HEIGHT = """() => {
  let height = document.documentElement.scrollHeight;
  for (const el of document.querySelectorAll("*")) {
    const overflow = getComputedStyle(el).overflowY;
    if ((overflow === "auto" || overflow === "scroll") && el.scrollHeight > el.clientHeight + 1)
      height = Math.max(height, window.innerHeight + el.scrollHeight - el.clientHeight);
  }
  return height;
}"""


def _browser(playwright: Any, executable: str) -> Any:
    return playwright.chromium.launch(executable_path=executable, headless=True,
                                      args=["--disable-dev-shm-usage", "--no-first-run"])


def take_snapshots(ui_url: str, pages: Sequence[UIPage], out_dir: Path, timeout_s: float = 60.0,
                   viewport: tuple[int, int] = (1400, 1000), max_height: int = 8000) -> list[Snapshot]:
    """Open each page in headless Chromium, wait until its expected texts are on screen (or
    `timeout_s` passes: those that never appeared are in Snapshot.missing), and save a
    full-page PNG `out_dir/NN-<name>.png`, as tall as the page's content (up to max_height)."""
    executable = chromium_path()
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import TimeoutError as PlaywrightTimeout
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        raise BrowserMissing(f"the Playwright package is missing ({e}): `pip install -e '.[dev]'`") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    shots: list[Snapshot] = []
    with sync_playwright() as playwright:
        try:
            browser = _browser(playwright, executable)
        except PlaywrightError as e:
            raise BrowserMissing(f"{executable} did not start under Playwright: {e}") from None
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            page = context.new_page()
            page.set_default_timeout(timeout_s * 1000)
            loaded: str | None = None
            for i, spec in enumerate(pages):
                if spec.path != loaded or not spec.tab:  # a tab of the page already open: just click it
                    page.goto(ui_url.rstrip("/") + spec.path, wait_until="domcontentloaded")
                    loaded = spec.path
                try:
                    if spec.tab:
                        page.locator("li.p-tab", has_text=spec.tab).first.click()
                        page.locator("li.p-tab__active", has_text=spec.tab).first.wait_for()
                    page.wait_for_function(_ALL_SHOWN, arg=[CONTENT, list(spec.expect)], timeout=timeout_s * 1000)
                    # The run graph is drawn on a canvas, after its data arrives: let requests settle.
                    page.wait_for_load_state("networkidle", timeout=timeout_s * 1000)
                except PlaywrightTimeout:
                    pass  # reported as missing texts below
                text = _visible_text(page)
                file = out_dir / f"{i:02d}-{spec.name}.png"
                height = min(max_height, max(viewport[1], int(page.evaluate(_CONTENT_HEIGHT))))
                page.set_viewport_size({"width": viewport[0], "height": height})
                page.screenshot(path=str(file), full_page=True)
                page.set_viewport_size({"width": viewport[0], "height": viewport[1]})
                shots.append(Snapshot(spec, file, text, tuple(t for t in spec.expect if t not in text)))
        finally:
            browser.close()
    return shots


def wait_for_final_logs(api_url: str, flow_run_id: UUID | str, timeout_s: float = 60.0) -> bool:
    """A run's state turns final before its process has shipped its last log lines to the API;
    wait (polling the API) for the engine's closing "Finished in state" line. False on timeout."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    deadline = time.monotonic() + timeout_s
    with SyncPrefectClient(api_url) as client:
        while True:
            last = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(str(flow_run_id))])),
                                    limit=5, sort=LogSort.TIMESTAMP_DESC)
            if any(log.message.startswith("Finished in state") for log in last):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)


def snapshot_flow_run(api_url: str, ui_url: str, flow_run_id: UUID | str, out_dir: Path,
                      timeout_s: float = 60.0) -> list[Snapshot]:
    """Every page of a finished flow run (plan_pages, take_snapshots), as PNGs in out_dir."""
    wait_for_final_logs(api_url, flow_run_id, timeout_s)
    return take_snapshots(ui_url, plan_pages(api_url, flow_run_id), out_dir, timeout_s)


def newest_flow_run(api_url: str, flow_name: str) -> str | None:
    """Id of the newest top-level run of `flow_name` (subflow runs of it are left out)."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import (
        FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterParentTaskRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    with SyncPrefectClient(api_url) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            flow_run_filter=FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(is_null_=True)),
            sort=FlowRunSort.START_TIME_DESC, limit=1)
    return str(runs[0].id) if runs else None


def is_png(path: Path, min_bytes: int = 10_000) -> bool:
    """A PNG file (by its signature) of at least min_bytes."""
    with open(path, "rb") as f:
        head = f.read(8)
    return head == b"\x89PNG\r\n\x1a\n" and path.stat().st_size >= min_bytes


def iter_missing(shots: Sequence[Snapshot]) -> Iterator[str]:
    for s in shots:
        if s.missing:
            yield f"{s.page.name} ({s.page.path}): {list(s.missing)}"
