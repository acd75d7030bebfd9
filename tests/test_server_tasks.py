"""Sweeps and LoRA training as jobs of the same queue, on a real server: a 2x2 grid with its files, a tiny
training run whose losses stream as events and whose LoRA appears in the catalog, datasets by name only."""

from __future__ import annotations

import json

import pytest
import requests

from server_process import ServerProcess, shapes_dataset, wait_job


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("tasks") / "home"
    shapes_dataset(home)
    with ServerProcess(home) as process:
        yield process


def test_a_sweep_job_makes_the_grid_and_its_files(server):
    body = {"sweep": {"request": {"prompt": "a red circle", "width": 64, "height": 64, "steps": 2, "seed": 1},
                      "x": "steps=2,3", "y": "cfg=1,2"}}
    job = server.post("/hayai/v1/jobs", body).json()
    assert job["kind"] == "sweep"
    done = wait_job(server, job["id"])
    assert done["status"] == "done", done["error"]
    result = done["result"]
    assert result["cells"] == 4 and result["ran"] == 4 and len(result["rows"]) == 4
    grid = server.get(done["file_urls"]["0"])
    assert grid.status_code == 200 and grid.content[:4] == b"\x89PNG"
    assert any(path.endswith("results.csv") for path in result["files"])
    assert server.get(f"/hayai/v1/jobs/{job['id']}/files/99").status_code == 404


def test_a_sweep_axis_that_names_a_model_path_is_refused(server):
    body = {"sweep": {"request": {"prompt": "x", "width": 64, "height": 64, "steps": 2}, "x": "checkpoint=/etc/passwd,b"}}
    assert server.post("/hayai/v1/jobs", body).status_code == 400
    assert server.post("/hayai/v1/jobs", {"sweep": {"request": {"prompt": "x"}}}).status_code == 400  # no axis
    both = {"request": {"prompt": "x"}, "sweep": {"request": {"prompt": "x"}, "x": "steps=2,3"}}
    assert server.post("/hayai/v1/jobs", both).status_code == 422


def test_a_training_job_streams_its_losses_and_its_lora_joins_the_catalog(server):
    assert [d["name"] for d in server.get("/hayai/v1/datasets").json()] == ["shapes"]
    report = server.get("/hayai/v1/datasets/shapes/check").json()
    assert report["images"] == 6
    train = {"dataset": "shapes", "output_name": "served-lora", "steps": 4, "batch_size": 2, "rank": 4,
             "resolution": 64, "sample_every": 0, "checkpoint_every": 2, "validation_every": 2,
             "validation_fraction": 0.2, "learning_rate": 1e-3}
    job = server.post("/hayai/v1/jobs", {"train": train}).json()
    assert job["kind"] == "train"
    with requests.get(f"{server.url}/hayai/v1/jobs/{job['id']}/events", stream=True, timeout=600) as stream:
        events = [json.loads(line[6:]) for line in stream.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    losses = [e["loss"] for e in events if e["type"] == "train" and e["phase"] == "train" and e["loss"] is not None]
    assert len(losses) >= 4 and events[-1] == {**events[-1], "type": "status", "status": "done"}
    done = wait_job(server, job["id"])
    assert done["result"]["step"] == 4 and done["result"]["lora_path"].endswith("served-lora.safetensors")
    assert "served-lora" in [lora["name"] for lora in server.get("/sdapi/v1/loras").json()]
    used = server.post("/sdapi/v1/txt2img", {"prompt": "a red circle <lora:served-lora:1>", "width": 64, "height": 64,
                                             "steps": 2, "seed": 1})
    assert used.status_code == 200 and "served-lora" in json.loads(used.json()["info"])["infotexts"][0]


def test_training_names_datasets_not_paths(server):
    for dataset in ("/etc", "../shapes", "nope"):
        refused = server.post("/hayai/v1/jobs", {"train": {"dataset": dataset, "steps": 2}})
        assert refused.status_code == 400 and "datasets" in refused.json()["detail"]
    assert server.post("/hayai/v1/jobs", {"train": {"dataset": "shapes", "output_dir": "/tmp/x"}}).status_code == 400
    assert server.get("/hayai/v1/datasets/..%2F..%2Fetc/check").status_code == 404


def test_an_explore_job_makes_consecutive_seeds_and_their_contact_sheet(server):
    body = {"explore": {"request": {"prompt": "a red circle", "width": 64, "height": 64, "steps": 2, "seed": 10},
                        "count": 4}}
    job = server.post("/hayai/v1/jobs", body).json()
    assert job["kind"] == "explore"
    done = wait_job(server, job["id"])
    assert done["status"] == "done", done["error"]
    assert [image["seed"] for image in done["result"]["images"]] == [10, 11, 12, 13]
    sheet = server.get(done["file_urls"]["0"])
    assert sheet.status_code == 200 and sheet.content[:4] == b"\x89PNG"
    odd = {"explore": {"request": {"prompt": "x", "batch_size": 3}, "count": 4}}
    assert server.post("/hayai/v1/jobs", odd).status_code == 400
