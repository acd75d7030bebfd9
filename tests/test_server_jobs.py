"""hayai's job API on a real server process: submit and poll, the event stream, images, idempotency keys,
priorities, cancelling, the plan without a run, and history search."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import requests

from server_process import ServerProcess, wait_job

SMALL = {"width": 64, "height": 64, "steps": 4}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("jobs") / "home") as process:
        yield process


def _submit(server, request: dict, **extra) -> requests.Response:
    headers = extra.pop("headers", {})
    return server.post("/hayai/v1/jobs", {"request": request, **extra}, headers=headers)


def _block(server, steps: int = 400) -> str:
    """A long job that holds the worker until cancelled."""
    job = _submit(server, {"prompt": "hold", "width": 128, "height": 128, "steps": steps}).json()
    deadline = time.monotonic() + 120
    while server.get(f"/hayai/v1/jobs/{job['id']}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return job["id"]


def test_a_job_is_answered_at_once_then_runs_and_its_images_download(server):
    response = _submit(server, {"prompt": "a red circle", "seed": 21, **SMALL})
    assert response.status_code == 202
    job = response.json()
    assert job["status"] in ("queued", "running") and job["request"]["seed"] == 21
    done = wait_job(server, job["id"])
    assert done["status"] == "done" and done["position"] is None
    result = done["result"]
    assert result["strategy"] and result["plan_reason"] and result["timings"]["denoise"] > 0
    image = result["images"][0]
    assert image["seed"] == 21 and "Seed: 21" in image["infotext"]
    png = server.get(image["url"])
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert server.get(f"/hayai/v1/jobs/{job['id']}/images/5").status_code == 404


def test_a_random_seed_is_drawn_when_the_job_is_queued(server):
    job = _submit(server, {"prompt": "a red circle", **SMALL}).json()
    assert 0 <= job["request"]["seed"] < 2**32  # fixed before it runs, so a restart re-runs the same images
    assert wait_job(server, job["id"])["result"]["images"][0]["seed"] == job["request"]["seed"]


def test_the_event_stream_follows_the_job_to_its_end(server):
    job = _submit(server, {"prompt": "a blue square", "seed": 3, **SMALL, "steps": 6}).json()
    with requests.get(f"{server.url}/hayai/v1/jobs/{job['id']}/events", stream=True, timeout=120) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in stream.iter_lines(decode_unicode=True)
                  if line.startswith("data: ")]
    types = [e["type"] for e in events]
    assert types[0] == "status" and types[-1] == "status" and events[-1]["status"] == "done"
    denoise = [e["done"] for e in events if e["type"] == "denoise"]
    assert denoise == list(range(1, 7))
    plan = next(e for e in events if e["type"] == "plan")
    assert plan["predicted_seconds"] > 0


def test_an_idempotency_key_makes_a_retry_find_the_same_job(server):
    request = {"prompt": "retry me", **SMALL}
    first = _submit(server, request, headers={"Idempotency-Key": "abc-1"})
    again = _submit(server, request, headers={"Idempotency-Key": "abc-1"})
    assert first.status_code == 202 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    other = _submit(server, {"prompt": "another", **SMALL}, headers={"Idempotency-Key": "abc-1"})
    assert other.status_code == 422 and "another request" in other.json()["detail"]
    wait_job(server, first.json()["id"])
    same = [j for j in server.get("/hayai/v1/jobs?limit=1000").json() if j["idempotency_key"] == "abc-1"]
    assert len(same) == 1


def test_a_running_job_shows_its_live_preview(server):
    """Every 10 steps by A1111's default options, the same base64 PNG /sdapi/v1/progress gives."""
    from server_process import b64_image

    blocker = _block(server)
    deadline, preview = time.monotonic() + 120, None
    while preview is None and time.monotonic() < deadline:
        progress = server.get(f"/hayai/v1/jobs/{blocker}").json().get("progress") or {}
        preview = progress.get("preview")
        time.sleep(0.05)
    assert server.delete(f"/hayai/v1/jobs/{blocker}").status_code == 200
    assert preview is not None and b64_image(preview).size == (32, 32)  # 128 px: a pixel per latent
    assert wait_job(server, blocker)["status"] == "interrupted"


def test_priority_runs_first_and_positions_count_down(server):
    blocker = _block(server)
    low = _submit(server, {"prompt": "low", "seed": 1, **SMALL}).json()
    high = _submit(server, {"prompt": "high", "seed": 1, **SMALL}, priority=5).json()
    assert server.get(f"/hayai/v1/jobs/{high['id']}").json()["position"] == 0
    assert server.get(f"/hayai/v1/jobs/{low['id']}").json()["position"] == 1
    queued = [j["id"] for j in server.get("/hayai/v1/jobs?status=queued").json()]
    assert queued == [high["id"], low["id"]]
    assert server.delete(f"/hayai/v1/jobs/{blocker}").status_code == 200
    low_done, high_done = wait_job(server, low["id"]), wait_job(server, high["id"])
    assert high_done["started_at"] < low_done["started_at"]
    assert wait_job(server, blocker)["status"] == "interrupted"


def test_delete_cancels_a_queued_job_and_interrupts_a_running_one(server):
    blocker = _block(server)
    queued = _submit(server, {"prompt": "never", **SMALL}).json()
    cancelled = server.delete(f"/hayai/v1/jobs/{queued['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert server.delete(f"/hayai/v1/jobs/{blocker}").status_code == 200
    assert wait_job(server, blocker)["status"] == "interrupted"
    assert server.delete(f"/hayai/v1/jobs/{queued['id']}").status_code == 409
    assert server.get("/hayai/v1/jobs/nope").status_code == 404


def test_concurrent_submissions_are_all_kept(server):
    ids: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        job = _submit(server, {"prompt": f"client {n}", "seed": n, **SMALL}).json()
        with lock:
            ids.append(job["id"])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 6
    assert all(wait_job(server, job_id)["status"] == "done" for job_id in ids)


def test_the_plan_is_shown_without_running(server):
    plan = server.post("/hayai/v1/plan", {"prompt": "x", "model": "arch:sdxl", "width": 1024, "height": 1024}).json()
    assert plan["model"] == "arch:sdxl" and plan["chosen"] and plan["candidates"]
    assert {"strategy", "peak_bytes", "seconds"} <= set(plan["candidates"][0])
    assert server.post("/hayai/v1/plan", {"prompt": "x", "model": "/etc/passwd"}).status_code == 400


def test_history_search_finds_runs_by_prompt(server):
    job = _submit(server, {"prompt": "a findable zebra", "seed": 1, **SMALL}).json()
    wait_job(server, job["id"])
    runs = server.get("/hayai/v1/history", params={"search": "ZEBRA"}).json()
    assert len(runs) == 1 and runs[0]["request"]["prompt"] == "a findable zebra" and runs[0]["status"] == "ok"
    assert server.get("/hayai/v1/history", params={"status": "bogus"}).status_code == 400


def test_requests_that_name_paths_or_unknown_fields_are_refused(server):
    assert _submit(server, {"prompt": "x", "output_dir": "/tmp"}).status_code == 422  # not a field of the API
    assert _submit(server, {"prompt": "x", "init_image": "/etc/hosts"}).status_code == 422
    assert _submit(server, {"prompt": "x", "loras": ["/tmp/a.safetensors"]}).status_code == 400
    assert _submit(server, {"prompt": "x", "model": "nope"}).status_code == 400
    assert _submit(server, {"prompt": "x", "steps": 0}).status_code == 400
    assert _submit(server, {"prompt": "x"}, strategy="warp-drive").status_code == 400


def test_deleting_a_run_moves_its_images_to_the_trash_and_keeps_the_run(server):
    job = _submit(server, {"prompt": "trash me", "seed": 2, **SMALL}).json()
    done = wait_job(server, job["id"])
    run_id, image = done["run_id"], Path(done["result"]["images"][0]["path"])
    moved = server.delete(f"/hayai/v1/history/{run_id}").json()["moved"]
    assert len(moved) == 1 and not image.exists() and Path(moved[0]).is_file() and "/trash/run-" in moved[0]
    run = server.get("/hayai/v1/history", params={"search": "trash me"}).json()[0]
    assert run["outputs"] == moved and run["events"][-1]["event"] == "trashed"
    assert server.delete(f"/hayai/v1/history/{run_id}").json()["moved"] == []  # already there
    assert server.delete("/hayai/v1/history/999999").status_code == 404


def test_speed_levers_come_through_the_job_api_but_not_a_tiny_vae_folder(server):
    job = _submit(server, {"prompt": "a red circle", "seed": 1, **SMALL, "speed": "balanced"}).json()
    infotext = wait_job(server, job["id"])["result"]["images"][0]["infotext"]
    assert "Speed: balanced" in infotext and "Step cache: 3" in infotext
    assert _submit(server, {"prompt": "x", "tiny_vae": "/opt/taesd"}).status_code == 422  # not a field of the API
    sweep = {"sweep": {"request": {"prompt": "x", **SMALL}, "x": "Tiny VAE=/opt/a,/opt/b"}}
    assert server.post("/hayai/v1/jobs", sweep).status_code == 400
