"""The web UI's Train, History and Queue pages in a real headless Chromium: a tiny LoRA training run whose
loss chart fills in as it runs and whose LoRA joins the Generate page's picker; then a restart of the
server process, after which the queue (a job left running, one queued) and the history are intact."""

from __future__ import annotations

import pytest

from server_process import ServerProcess, shapes_dataset, wait_job
from ui_browser import offline_browser, open_tab, require_browser, shot

RUN_S = 300_000


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    require_browser()
    home = tmp_path_factory.mktemp("ui-train") / "home"
    shapes_dataset(home)
    return home


@pytest.fixture(scope="module")
def browser(home):
    with offline_browser() as browser:
        yield browser


def _fill(page, selector: str, value) -> None:
    page.locator(f"{selector} input, {selector} textarea").first.fill(str(value))


def test_train_a_tiny_lora_see_the_loss_chart_then_restart_and_find_queue_and_history(home, browser):
    server = ServerProcess(home)
    try:
        page = browser.page(server.url)
        open_tab(page, "Train")
        page.locator("#train_dataset input").click()
        page.get_by_role("option", name="shapes").click()
        page.wait_for_function("document.querySelector('#train_report')?.innerText.includes('6 images')")
        for name, value in (("output_name", "ui-lora"), ("steps", 4), ("resolution", 64), ("rank", 4),
                            ("batch_size", 2), ("sample_every", 0), ("checkpoint_every", 2), ("validation_every", 2)):
            _fill(page, f"#train_{name}", value)
        page.locator("#train_start").click()
        page.wait_for_function("document.querySelector('#train_summary')?.innerText.includes('LoRA')", timeout=RUN_S)
        summary = page.locator("#train_summary").inner_text()
        assert "ok at step 4/4" in summary and "ui-lora.safetensors" in summary
        chart = page.locator("#train_chart img")
        assert chart.count() == 1 and chart.evaluate("img => img.naturalWidth") > 100  # the loss curve, drawn
        shot(page, "train-desktop")
        open_tab(page, "Generate")
        page.locator("#lora_refresh").click()
        page.locator("#lora_pick input").click()
        assert page.get_by_role("option", name="ui-lora").count() == 1

        made = server.post("/hayai/v1/jobs", {"request": {"prompt": "a yellow star", "steps": 2, "seed": 3}}).json()
        assert wait_job(server, made["id"])["status"] == "done"
        running = server.post("/hayai/v1/jobs", {"request": {"prompt": "still running", "steps": 1000, "seed": 4}}).json()
        queued = server.post("/hayai/v1/jobs", {"request": {"prompt": "still queued", "steps": 2, "seed": 5}}).json()
        page.close()
    finally:
        server.stop()  # a shutdown leaves the running job 'running': the next start runs it again

    server = ServerProcess(home)
    try:
        page = browser.page(server.url)
        open_tab(page, "Queue")
        page.wait_for_function(f"document.querySelector('#queue_table')?.innerText.includes('{queued['id']}')")
        table = page.locator("#queue_table").inner_text()
        assert running["id"] in table and made["id"] in table and "ui-lora" in table
        shot(page, "queue-after-restart")
        open_tab(page, "History")
        page.wait_for_function("document.querySelectorAll('#history_gallery img').length >= 1")
        _fill(page, "#history_search", "yellow star")
        page.locator("#history_search input, #history_search textarea").first.press("Enter")
        page.wait_for_function("document.querySelectorAll('#history_gallery img').length === 1")
        page.wait_for_function("[...document.querySelectorAll('#history_gallery img')].every(i => i.complete)")
        page.locator("#history_gallery img").first.click()
        page.wait_for_function("document.querySelector('#history_settings')?.innerText.includes('yellow star')")
        assert '"seed": 3' in page.locator("#history_settings").inner_text()
        shot(page, "history-desktop")
        page.locator("#history_trash").click()
        page.wait_for_function("document.querySelector('#history_settings')?.innerText.includes('moved 1 image')")
        assert page.locator("#history_gallery img").count() == 0
        assert len(list((home / "trash").glob("run-*/*.png"))) == 1  # moved, not deleted
        for job in (queued, running):
            server.delete(f"/hayai/v1/jobs/{job['id']}")
        page.close()
    finally:
        server.stop()


def test_the_live_loss_chart_grows_with_the_training_events():
    from hayai.server.ui.train import loss_picture, loss_series

    events = [{"type": "status", "status": "running"},
              {"type": "train", "phase": "train", "step": 1, "loss": 0.9, "val_loss": None},
              {"type": "train", "phase": "validate", "step": 1, "loss": None, "val_loss": 0.8}]
    assert loss_series(events) == ([(1, 0.9)], [(1, 0.8)])
    assert loss_picture(events[:1]) is None  # nothing to draw yet
    later = events + [{"type": "train", "phase": "train", "step": 2, "loss": 0.7, "val_loss": None}]
    assert len(loss_series(later)[0]) == 2
    picture = loss_picture(later)
    assert picture.size == (700, 400) and len(set(picture.getdata())) > 2  # a curve, not a blank canvas
