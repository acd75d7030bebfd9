"""The queue outlives the server: kill -9 with jobs queued and one running, start again, and every job runs
exactly once to the end, the interrupted one from the start with the seed it was given."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from server_process import ServerProcess, wait_job

SMALL = {"width": 64, "height": 64, "steps": 4}


def test_kill_9_with_jobs_queued_loses_none_and_runs_none_twice(tmp_path):
    home = tmp_path / "home"
    server = ServerProcess(home)
    try:
        running = server.post("/hayai/v1/jobs", {"request": {"prompt": "long", "seed": 50, "width": 128, "height": 128,
                                                             "steps": 200}}).json()
        deadline = time.monotonic() + 120
        while server.get(f"/hayai/v1/jobs/{running['id']}").json().get("progress", {}).get("done", 0) < 1:
            assert time.monotonic() < deadline  # killed mid-denoise, its run logged
            time.sleep(0.05)
        queued = [server.post("/hayai/v1/jobs", {"request": {"prompt": f"job {n}", "seed": n, **SMALL}}).json()
                  for n in range(5)]
        # an A1111 client waits on its connection: its job, saving nothing, is not run for nobody after a restart
        client = threading.Thread(target=_post_quietly, args=(server, {"prompt": "waiting client", **SMALL}))
        client.start()
        while not [j for j in server.get("/hayai/v1/jobs").json() if j["api"] == "a1111"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        server.kill()  # SIGKILL: no shutdown code runs
    assert server.proc.returncode == -9

    with ServerProcess(home) as again:
        ids = [job["id"] for job in queued]
        finished = [wait_job(again, job_id) for job_id in ids]
        assert [job["status"] for job in finished] == ["done"] * 5
        assert [job["result"]["images"][0]["seed"] for job in finished] == list(range(5))
        restarted = again.get(f"/hayai/v1/jobs/{running['id']}").json()
        assert restarted["attempts"] == 2 and restarted["request"]["seed"] == 50
        assert wait_job(again, running["id"])["status"] == "done"  # it ran first: it kept its place
        attempts = again.get("/hayai/v1/history", params={"search": "long"}).json()
        assert sorted(run["status"] for run in attempts) == ["interrupted", "ok"]  # the killed attempt, the whole one
        dropped = [j for j in again.get("/hayai/v1/jobs").json() if j["api"] == "a1111"]
        assert len(dropped) == 1 and dropped[0]["status"] == "cancelled" and "restarted" in dropped[0]["error"]
    client.join(timeout=60)

    db = sqlite3.connect(home / "hayai.db")
    jobs = db.execute("SELECT id, status FROM jobs").fetchall()
    assert len(jobs) == 7 and len({job_id for job_id, _ in jobs}) == 7
    runs = db.execute("SELECT status, json_extract(request, '$.prompt') FROM runs WHERE status = 'ok'").fetchall()
    prompts = sorted(prompt for _, prompt in runs)
    assert prompts == sorted([*(f"job {n}" for n in range(5)), "long"])  # each job made its images once
    outputs = sorted(p.name for p in (home / "outputs").glob("*.png"))
    assert len(outputs) == 6


def test_a_second_server_on_the_same_home_is_refused(tmp_path):
    home = tmp_path / "home"
    with ServerProcess(home):
        with pytest.raises(RuntimeError, match="another hayai server"):
            ServerProcess(home)


def _post_quietly(server, payload) -> None:
    try:
        server.post("/sdapi/v1/txt2img", payload, timeout=120)
    except Exception:  # the server is killed under it
        pass
