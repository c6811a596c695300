"""The labelling page in a real browser: Debian's chromium, headless, driven by Playwright.

Four queries are answered with the keyboard only (the last with 4, "cannot tell");
the store must then hold exactly those four labels. A screenshot of the page with a real query is saved to the
test's tmp dir, and to docs/labeling.png when MBRM_UPDATE_DOCS=1 (so a test run
leaves the source tree as it was).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mbrm.feedback.segments import FeedbackKind, Labeller, Preference
from mbrm.feedback.store import FeedbackStore, QueryStatus
from mbrm.labeling import LabelServer, make_sample_run

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> Path:
    """The browser, installed through the project's script where it is missing."""
    if not CHROMIUM.exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "ensure_browser.sh")], check=False)
    if not CHROMIUM.exists():
        pytest.skip(
            f"no browser: {CHROMIUM} is missing and scripts/ensure_browser.sh could not "
            "install it (needs root and apt-get)"
        )
    return CHROMIUM


def _sync_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright)")
    return sync_playwright


def _wait_for_query(page, query_id: int, timeout_ms: int = 30_000) -> None:
    """Wait until the page shows ``query_id`` with its clips decoded.

    Selectors, not evaluated JavaScript: the page's Content-Security-Policy forbids eval.
    """
    page.locator(f"body[data-state='ready'][data-query='{query_id}']").wait_for(timeout=timeout_ms)


def test_label_four_queries_with_the_keyboard(tmp_path):
    browser_path = _chromium()
    sync_playwright = _sync_playwright()
    run = make_sample_run(
        tmp_path / "run", preference_queries=2, unacceptable_queries=2, segment_length=10
    )
    with FeedbackStore(run / "feedback.sqlite") as store:
        order = [q.id for q in store.pending_queries()]  # the lease hands them out in this order
        kinds = [store.get_query(i).kind for i in order]
        segments = {s for i in order for s in store.get_query(i).segment_ids}
    assert kinds == [FeedbackKind.PREFERENCE] * 2 + [FeedbackKind.UNACCEPTABLE] * 2

    errors: list[str] = []
    with (
        LabelServer(run, annotator="ada", clip_size=(240, 240), fps=10) as server,
        sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(executable_path=str(browser_path), args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 820})
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on(
                "console",
                lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None,
            )
            page.goto(server.url)

            # Query 1: a real clip against an imagined one.
            _wait_for_query(page, order[0])
            assert page.locator(".clip.imagined .badge.imagined").count() == 1
            assert "labelled 0" in page.inner_text("#progress")
            assert "pending 4" in page.inner_text("#progress")
            assist = page.inner_text(".clip[data-side=left] .assist")
            assert "predicted return" in assist, assist
            page.keyboard.press("Home")  # pause on frame 0: a still frame for the screenshot
            page.wait_for_timeout(150)
            shot = page.screenshot(full_page=True)
            (tmp_path / "labeling.png").write_bytes(shot)
            if os.environ.get("MBRM_UPDATE_DOCS") == "1":
                (ROOT / "docs" / "labeling.png").write_bytes(shot)
            page.keyboard.press("ArrowLeft")  # left is better

            # Query 2: right is better, with the number key.
            _wait_for_query(page, order[1])
            page.keyboard.press("2")

            # Query 3: one clip; unacceptable from frame 4 (Home, then four steps, then u).
            _wait_for_query(page, order[2])
            page.keyboard.press("Home")
            for _ in range(4):
                page.keyboard.press(".")
            assert "frame 4 /" in page.inner_text("#frame")
            page.keyboard.press("u")

            # Query 4: one clip; cannot tell (an answer that judges no state).
            _wait_for_query(page, order[3])
            assert "4/? cannot tell" in page.inner_text("#keys")
            page.keyboard.press("4")
            page.locator("body[data-state='empty']").wait_for(timeout=30_000)
            assert "labelled 4" in page.inner_text("#progress")
            assert "pending 0" in page.inner_text("#progress")
        finally:
            browser.close()
    assert errors == []

    with FeedbackStore(run / "feedback.sqlite") as store:
        assert store.count_labels() == 4
        assert store.count_queries(QueryStatus.PENDING) == 0
        labels = {i: store.get_label(i) for i in order}
        assert labels[order[0]].value is Preference.LEFT
        assert labels[order[1]].value is Preference.RIGHT
        flags = labels[order[2]].value
        assert flags.first_step == 4
        assert np.array_equal(flags.known, np.arange(flags.n_states) <= 4)
        cannot_tell = labels[order[3]].value
        assert not cannot_tell.known.any() and not cannot_tell.flags.any()
        assert [lab.who for lab in labels.values()] == [Labeller.person("ada")] * 4
    # One cached clip per segment shown, however many queries showed it.
    assert len(list((run / "clips").iterdir())) == len(segments)


def test_ensure_browser_script_is_harmless_when_present():
    """The script exits 0 and does nothing when the browser is already there."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing; the install path is exercised by the test above")
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure_browser.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0
    assert out.stderr == ""
