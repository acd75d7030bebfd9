"""The web UI in a real headless Chromium against a real `hayai serve` with the demo model: type a prompt,
generate, see the image and its infotext; the plan; interrupt a long run; paint a mask and inpaint; a 2x2
sweep's grid; the queue page. Every page load asserts nothing was fetched from beyond 127.0.0.1. Each
test saves screenshots (tests/ui_browser.ARTEFACTS)."""

from __future__ import annotations

import pytest

from server_process import ServerProcess
from ui_browser import PHONE, offline_browser, open_tab, require_browser, shot

RUN_S = 240_000  # ms: a job on a loaded 2-core machine


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_browser()
    with ServerProcess(tmp_path_factory.mktemp("ui") / "home") as process:
        yield process


@pytest.fixture(scope="module")
def browser(server):
    with offline_browser() as browser:
        yield browser


def _generate(page, prompt: str, steps: int) -> None:
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#steps input").fill(str(steps))
    page.locator("#generate").click()


def _value(page, selector: str) -> str:
    return page.locator(selector).input_value()


def test_type_a_prompt_generate_and_see_the_image_its_infotext_and_timings(server, browser):
    page = browser.page(server.url)
    assert page.title() == "hayai"
    assert _value(page, "#model input") == "hayai-shapes"
    prompt = "a small red circle at the top left on a white background"  # what the demo model draws well
    page.locator("#prompt textarea").press_sequentially(prompt)
    page.wait_for_function("document.querySelector('#prompt_tokens')?.innerText.includes('tokens')")
    assert "CLIP" in page.locator("#prompt_tokens").inner_text()
    page.locator("#plan").click()
    page.wait_for_function("document.querySelector('#plan_table')?.innerText.includes('chosen')")
    assert "predicted time" in page.locator("#plan_table").inner_text()
    page.locator("#steps input").fill("12")
    page.locator("#seed input").fill("7")
    page.locator("#generate").click()
    page.wait_for_function("document.querySelector('#infotext textarea')?.value.includes('Seed: 7')", timeout=RUN_S)
    infotext = _value(page, "#infotext textarea")
    assert infotext.startswith(prompt + "\n") and "Steps: 12" in infotext and "Model: hayai-shapes" in infotext
    assert page.locator("#gallery img").count() >= 1
    assert page.locator("#gallery img").first.evaluate("img => img.complete && img.naturalWidth") == 64
    details = page.locator("#details").inner_text()
    assert "denoise" in details and "peak memory" in details
    assert "done" in page.locator("#progress").inner_text()
    shot(page, "generate-desktop")
    page.locator("#seed_random").click()
    page.wait_for_function("document.querySelector('#seed input')?.value === '-1'")
    page.locator("#seed_reuse").click()
    page.wait_for_function("document.querySelector('#seed input')?.value === '7'")

    phone = browser.page(server.url, PHONE)
    phone.locator("#prompt textarea").press_sequentially("a blue square")
    phone.wait_for_function("document.querySelector('#prompt_tokens')?.innerText.includes('tokens')")
    shot(phone, "generate-phone")
    phone.locator("#generate").scroll_into_view_if_needed()
    assert phone.locator("#generate").is_visible()
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # no sideways scrolling
    phone.close()
    page.close()


def test_interrupt_stops_a_long_run_at_its_next_step(server, browser):
    page = browser.page(server.url)
    _generate(page, "a long run", 1000)
    page.wait_for_function("document.querySelector('#progress')?.innerText.includes('ETA')", timeout=RUN_S)
    # the live preview (A1111's default: every 10 steps) shows in the gallery while it runs: a pixel per latent
    page.wait_for_function("document.querySelector('#gallery img')?.naturalWidth > 0", timeout=RUN_S)
    assert page.locator("#gallery img").first.evaluate("img => img.naturalWidth") == 16
    shot(page, "generate-running")
    page.locator("#interrupt").click()
    page.wait_for_function("document.querySelector('#progress')?.innerText.includes('interrupted')", timeout=RUN_S)
    jobs = server.get("/hayai/v1/jobs?limit=1").json()
    assert jobs[0]["status"] == "interrupted" and jobs[0]["request"]["steps"] == 1000
    page.close()


def test_paint_a_mask_and_inpaint(server, browser):
    page = browser.page(server.url)
    _generate(page, "a green triangle", 3)
    page.wait_for_function("document.querySelector('#infotext textarea')?.value.includes('Steps')", timeout=RUN_S)
    page.locator("#send_to_inpaint").click()
    page.wait_for_function("document.querySelector('#inpaint_editor canvas')")
    page.wait_for_timeout(1500)  # the editor loads the image into its canvas
    page.locator("#inpaint_editor button[aria-label='Brush']").first.click()
    box = page.locator("#inpaint_editor canvas").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.35)
    page.mouse.down()
    for i in range(8):
        page.mouse.move(box["x"] + box["width"] * (0.35 + 0.03 * i), box["y"] + box["height"] * (0.35 + 0.03 * i))
    page.mouse.up()
    page.locator("#i2i_prompt textarea").fill("a blue square")
    page.locator("#i2i_steps input").fill("3")
    page.locator("#i2i_generate").click()
    page.wait_for_function("document.querySelector('#i2i_infotext textarea')?.value.includes('Steps')", timeout=RUN_S)
    infotext = _value(page, "#i2i_infotext textarea")
    assert "Denoising strength: 0.75" in infotext and "Mask blur" in infotext  # a masked (inpaint) run
    job = server.get("/hayai/v1/jobs?limit=1").json()[0]
    assert job["status"] == "done" and job["request"]["mask"] and job["request"]["init_image"]
    assert page.locator("#i2i_gallery img").count() >= 1
    shot(page, "inpaint-desktop")
    page.close()


def test_a_2x2_sweep_shows_its_grid_and_cell_times(server, browser):
    page = browser.page(server.url)
    open_tab(page, "Sweep")
    page.locator("#sweep_prompt textarea").fill("a red circle")
    page.locator("#sweep_x textarea, #sweep_x input").first.fill("steps=2,3")
    page.locator("#sweep_y textarea, #sweep_y input").first.fill("CFG Scale=1,2")
    page.locator("#sweep_seed input").fill("1")
    page.locator("#sweep_run").click()
    page.wait_for_function("document.querySelector('#sweep_folder')?.innerText.includes('cells run')", timeout=RUN_S)
    assert "cells run 4" in page.locator("#sweep_folder").inner_text()
    assert page.locator("#sweep_grid img").count() >= 2  # the grid and the time chart
    table = page.locator("#sweep_table").inner_text()
    assert all(f"z0-y{y}-x{x}" in table for x in (0, 1) for y in (0, 1)), table  # one row per cell, with its time
    shot(page, "sweep-desktop")
    page.close()


def test_explore_many_seeds_then_refine_one_in_generate(server, browser):
    page = browser.page(server.url)
    open_tab(page, "Explore")
    page.locator("#explore_prompt textarea").fill("a small blue square at the bottom right on a white background")
    page.locator("#explore_count input[type=number]").fill("4")
    page.locator("#explore_steps input").fill("6")
    page.locator("#explore_seed input").fill("40")
    page.locator("#explore_run").click()
    page.wait_for_function("document.querySelectorAll('#explore_tiles img').length === 4", timeout=RUN_S)
    assert page.locator("#explore_sheet img").count() == 1  # the contact sheet, labelled with the seeds
    page.wait_for_function("[...document.querySelectorAll('#explore_tiles img')].every(i => i.complete)")
    page.locator("#explore_tiles img").nth(2).click()
    page.wait_for_function("document.querySelector('#explore_picked')?.innerText.includes('42')")
    shot(page, "explore-desktop")
    page.locator("#explore_refine").click()
    page.wait_for_function("document.querySelector('#seed input')?.value === '42'")
    assert _value(page, "#prompt textarea").startswith("a small blue square")
    assert _value(page, "#batch_count input") == "1"
    page.close()


def test_the_queue_page_lists_the_jobs_and_cancels_a_queued_one(server, browser):
    long = server.post("/hayai/v1/jobs", {"request": {"prompt": "busy", "steps": 1000, "seed": 1}}).json()
    queued = server.post("/hayai/v1/jobs", {"request": {"prompt": "waiting", "steps": 2, "seed": 1}}).json()
    page = browser.page(server.url)
    open_tab(page, "Queue")
    page.wait_for_function(f"document.querySelector('#queue_table')?.innerText.includes('{queued['id']}')")
    text = page.locator("#queue_table").inner_text()
    assert "running" in text and "queued" in text and "a red circle" in text
    page.locator("#queue_job_id textarea, #queue_job_id input").first.fill(queued["id"])
    page.locator("#queue_cancel").click()
    page.wait_for_function("document.querySelector('#queue_message')?.innerText.includes('cancelled')")
    assert server.get(f"/hayai/v1/jobs/{queued['id']}").json()["status"] == "cancelled"
    shot(page, "queue-desktop")
    page.locator("#queue_job_id textarea, #queue_job_id input").first.fill(long["id"])
    page.locator("#queue_cancel").click()
    page.wait_for_function("document.querySelector('#queue_message')?.innerText.includes('interrupting')")
    page.close()
