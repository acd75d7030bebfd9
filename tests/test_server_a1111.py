"""AUTOMATIC1111's API on a real `hayai serve` process (loopback, the built-in demo model): the shapes its
clients read, the payload the `webuiapi` client sends, progress that moves, interrupt, and refusals."""

from __future__ import annotations

import json
import threading
import time

import pytest
from PIL import Image

from server_process import ServerProcess, b64_image, png_b64

SMALL = {"width": 64, "height": 64, "steps": 4}

# what webuiapi 0.9.17's WebUIApi.txt2img() posts with its defaults (mix1009/sdwebuiapi webuiapi/webuiapi.py)
WEBUIAPI_TXT2IMG = {
    "enable_hr": False, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_resize_x": 0,
    "hr_resize_y": 0, "denoising_strength": 0.7, "firstphase_width": 0, "firstphase_height": 0, "prompt": "",
    "styles": [], "seed": -1, "subseed": -1, "subseed_strength": 0.0, "seed_resize_from_h": 0, "seed_resize_from_w": 0,
    "batch_size": 1, "n_iter": 1, "steps": 20, "cfg_scale": 7.0, "width": 512, "height": 512, "restore_faces": False,
    "tiling": False, "do_not_save_samples": False, "do_not_save_grid": False, "negative_prompt": "", "eta": 1.0,
    "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "override_settings": {},
    "override_settings_restore_afterwards": True, "sampler_name": "Euler a", "sampler_index": "Euler a",
    "script_name": None, "script_args": [], "send_images": True, "save_images": False, "alwayson_scripts": {},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("a1111") / "home") as process:
        yield process


def test_txt2img_answers_in_a1111s_shape_with_the_infotext_in_each_png(server):
    response = server.post("/sdapi/v1/txt2img", {"prompt": "a red circle", "seed": 7, "batch_size": 2, **SMALL})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"images", "parameters", "info"}
    info = json.loads(body["info"])  # a JSON string, as webuiapi's json.loads expects
    for key in ("prompt", "all_prompts", "negative_prompt", "seed", "all_seeds", "width", "height", "sampler_name",
                "cfg_scale", "steps", "batch_size", "sd_model_name", "sd_model_hash", "infotexts", "job_timestamp",
                "clip_skip", "index_of_first_image"):
        assert key in info, key
    assert info["all_seeds"] == [7, 8] and info["width"] == 64 and info["steps"] == 4
    assert len(body["images"]) == 2
    for text, infotext in zip(body["images"], info["infotexts"]):
        image = b64_image(text)
        assert image.format == "PNG" and image.size == (64, 64)
        assert image.info["parameters"] == infotext
        assert "Seed: " in infotext and "Model: hayai-shapes" in infotext
    assert body["parameters"]["prompt"] == "a red circle"


def test_the_same_seed_gives_the_same_image_and_send_images_false_sends_none(server):
    first = server.post("/sdapi/v1/txt2img", {"prompt": "a blue square", "seed": 3, **SMALL}).json()
    second = server.post("/sdapi/v1/txt2img", {"prompt": "a blue square", "seed": 3, **SMALL}).json()
    assert b64_image(first["images"][0]).tobytes() == b64_image(second["images"][0]).tobytes()
    quiet = server.post("/sdapi/v1/txt2img", {"prompt": "a blue square", "seed": 3, "send_images": False, **SMALL})
    assert quiet.status_code == 200 and quiet.json()["images"] == []


def test_the_webuiapi_clients_payload_is_accepted_whole(server):
    payload = {**WEBUIAPI_TXT2IMG, "prompt": "a green triangle", "seed": 11, **SMALL}
    response = server.post("/sdapi/v1/txt2img", payload)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["sampler_name"] == "Euler a" and info["seed"] == 11
    assert "eta" not in info["hayai"]["ignored"]  # sent at its default: nothing was dropped
    assert server.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}  # webuiapi's first call


def test_hires_fix_through_enable_hr(server):
    payload = {"prompt": "a red circle", "seed": 5, **SMALL, "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 2,
               "denoising_strength": 0.5}
    body = server.post("/sdapi/v1/txt2img", payload).json()
    image = b64_image(body["images"][0])
    assert image.size == (128, 128)
    assert "Hires upscale: 2" in image.info["parameters"]


def test_img2img_and_inpainting_take_base64_images_with_or_without_a_data_prefix(server):
    source = Image.new("RGB", (64, 64), "white")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    plain = server.post("/sdapi/v1/img2img", {"prompt": "a red circle", "seed": 1, "init_images": [png_b64(source)],
                                              "denoising_strength": 0.6, "steps": 4})
    assert plain.status_code == 200, plain.text
    assert b64_image(plain.json()["images"][0]).size == (64, 64)
    assert plain.json()["parameters"]["init_images"] is None  # not echoed back (include_init_images is false)
    inpaint = server.post("/sdapi/v1/img2img", {
        "prompt": "a red circle", "seed": 1, "init_images": ["data:image/png;base64," + png_b64(source)],
        "mask": png_b64(mask), "denoising_strength": 0.9, "steps": 4, "inpainting_fill": 1, "inpaint_full_res": False})
    assert inpaint.status_code == 200, inpaint.text
    out = b64_image(inpaint.json()["images"][0]).convert("RGB")
    assert out.getpixel((2, 2)) == (255, 255, 255)  # outside the mask the input is kept
    infotext = json.loads(inpaint.json()["info"])["infotexts"][0]
    assert "Denoising strength: 0.9" in infotext and "Inpaint area" not in infotext  # whole picture: A1111's default key


def test_refusals_name_the_problem(server):
    unknown = server.post("/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": "Nope", **SMALL})
    assert unknown.status_code == 400 and "Nope" in unknown.json()["detail"]
    bad64 = server.post("/sdapi/v1/img2img", {"prompt": "x", "init_images": ["not base64!"]})
    assert bad64.status_code == 422 and "init_images[0]" in bad64.json()["detail"]
    not_image = server.post("/sdapi/v1/img2img", {"prompt": "x", "init_images": ["aGVsbG8gd29ybGQ="]})
    assert not_image.status_code == 422 and "not an image" in not_image.json()["detail"]
    faces = server.post("/sdapi/v1/txt2img", {"prompt": "x", "restore_faces": True, **SMALL})
    assert faces.status_code == 400 and "restore_faces" in faces.json()["detail"]
    by_path = server.post("/sdapi/v1/txt2img", {"prompt": "x", "override_settings": {"sd_model_checkpoint": "/etc/passwd"}})
    assert by_path.status_code == 400
    lora_path = server.post("/sdapi/v1/txt2img", {"prompt": "x <lora:../../secret:1>", **SMALL})
    assert lora_path.status_code == 400 and "path" in lora_path.json()["detail"]
    pickle = server.post("/sdapi/v1/txt2img", {"prompt": "x <lora:evil.ckpt:1>", **SMALL})
    assert pickle.status_code == 400


def test_progress_moves_during_a_job_and_reads_exactly_idle_after(server):
    """...with A1111's default live previews: every 10 steps, a PNG of the image in progress in current_image
    (a pixel per latent), unless the client asks to skip it."""
    idle = server.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["eta_relative"] == 0
    seen: list[dict] = []
    skipped: list[dict] = []
    done = threading.Event()

    def poll():
        while not done.is_set():
            seen.append(server.get("/sdapi/v1/progress").json())
            skipped.append(server.get("/sdapi/v1/progress", params={"skip_current_image": "true"}).json())
            time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        response = server.post("/sdapi/v1/txt2img", {"prompt": "a red circle", "seed": 9, "width": 128, "height": 128,
                                                      "steps": 30})
    finally:
        done.set()
        poller.join()
    assert response.status_code == 200
    steps = [p["state"]["sampling_step"] for p in seen if p["state"]["job_count"]]
    fractions = [p["progress"] for p in seen if p["state"]["job_count"]]
    assert len(set(steps)) >= 3, steps  # it moved, step by step (not stuck at 0.01)
    assert steps == sorted(steps) and max(fractions) > 0.2
    assert all(p["state"]["sampling_steps"] == 30 for p in seen if p["state"]["job_count"] and p["state"]["sampling_steps"])
    previews = [p for p in seen if p["current_image"]]
    assert previews and all(p["state"]["sampling_step"] >= 10 for p in previews), [p["state"] for p in previews]
    assert b64_image(previews[-1]["current_image"]).size == (32, 32)  # 128 px, a pixel per latent
    assert not [p for p in skipped if p["current_image"]]
    after = server.get("/sdapi/v1/progress").json()
    assert after["progress"] == 0 and after["state"]["job_count"] == 0 and after["current_image"] is None


def test_live_preview_options_are_checked_and_turn_previews_off(server):
    for bad in ({"show_progress_every_n_steps": -2}, {"show_progress_every_n_steps": 2.5},
                {"show_progress_type": "Approx"}, {"live_previews_enable": "yes"}):
        refused = server.post("/sdapi/v1/options", bad)
        assert refused.status_code == 400 and next(iter(bad)) in refused.json()["detail"]
    assert server.post("/sdapi/v1/options", {"show_progress_every_n_steps": 0}).status_code == 200
    try:
        seen: list[dict] = []
        done = threading.Event()

        def poll():
            while not done.is_set():
                seen.append(server.get("/sdapi/v1/progress").json())
                time.sleep(0.02)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            assert server.post("/sdapi/v1/txt2img", {"prompt": "a red circle", "seed": 9, "width": 128, "height": 128,
                                                      "steps": 20}).status_code == 200
        finally:
            done.set()
            poller.join()
        assert [p["state"]["sampling_step"] for p in seen if p["state"]["job_count"]]  # it ran while polled
        assert not [p for p in seen if p["current_image"]]
    finally:
        assert server.post("/sdapi/v1/options", {"show_progress_every_n_steps": 10}).status_code == 200


def test_interrupt_stops_the_job_at_the_next_step(server):
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(response=server.post(
        "/sdapi/v1/txt2img", {"prompt": "a red circle", "seed": 2, "width": 128, "height": 128, "steps": 400})))
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.get("/sdapi/v1/progress").json()["state"]["sampling_step"] < 2:
        time.sleep(0.05)
    assert server.post("/sdapi/v1/interrupt").status_code == 200
    thread.join(timeout=120)
    response = result["response"]
    assert response.status_code == 200
    info = json.loads(response.json()["info"])
    assert info["hayai"]["interrupted"] is True and response.json()["images"] == []
    assert server.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0


def test_concurrent_clients_all_get_their_images(server):
    results: dict[int, object] = {}

    def client(n: int) -> None:
        results[n] = server.post("/sdapi/v1/txt2img", {"prompt": f"shape {n}", "seed": 100 + n, **SMALL})

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert sorted(results) == [0, 1, 2, 3]
    for n, response in results.items():
        assert response.status_code == 200
        info = json.loads(response.json()["info"])
        assert info["seed"] == 100 + n and info["prompt"] == f"shape {n}" and len(response.json()["images"]) == 1


def test_options_switch_the_model_by_title_and_refuse_unknown_ones(server):
    models = server.get("/sdapi/v1/sd-models").json()
    assert models and set(models[0]) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    title = models[0]["title"]
    assert server.post("/sdapi/v1/options", {"sd_model_checkpoint": title}).status_code == 200
    assert server.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == title
    refused = server.post("/sdapi/v1/options", {"sd_model_checkpoint": "no-such-model [0123456789]"})
    assert refused.status_code == 400 and "sd-models" in refused.json()["detail"]
    assert server.post("/sdapi/v1/options", {"CLIP_stop_at_last_layers": 0}).status_code == 400


def test_the_listing_routes_answer_in_a1111s_shapes(server):
    samplers = server.get("/sdapi/v1/samplers").json()
    assert {"name", "aliases", "options"} <= set(samplers[0]) and "Euler a" in [s["name"] for s in samplers]
    schedulers = server.get("/sdapi/v1/schedulers").json()
    assert {"name", "label", "aliases", "default_rho", "need_inner_model"} <= set(schedulers[0])
    assert "karras" in [s["name"] for s in schedulers]
    upscalers = server.get("/sdapi/v1/upscalers").json()
    assert {"name", "model_name", "model_path", "model_url", "scale"} <= set(upscalers[0])
    assert [m["name"] for m in server.get("/sdapi/v1/latent-upscale-modes").json()][0] == "Latent"
    assert server.get("/sdapi/v1/loras").json() == []
    memory = server.get("/sdapi/v1/memory").json()
    assert {"free", "used", "total"} <= set(memory["ram"]) and "cuda" in memory
    assert server.get("/sdapi/v1/cmd-flags").json()["api"] is True
    for route in ("refresh-checkpoints", "refresh-loras"):
        assert server.post(f"/sdapi/v1/{route}").status_code == 200
    assert server.get("/docs").status_code == 200 and "/sdapi/v1/txt2img" in server.get("/openapi.json").json()["paths"]


def test_png_info_reads_back_the_infotext(server):
    body = server.post("/sdapi/v1/txt2img", {"prompt": "a red circle", "seed": 4, **SMALL}).json()
    info = server.post("/sdapi/v1/png-info", {"image": body["images"][0]}).json()
    assert info["info"] == json.loads(body["info"])["infotexts"][0]
    assert info["parameters"]["Prompt"] == "a red circle" and info["parameters"]["Seed"] == "4"
    assert info["parameters"]["Size-1"] == "64"
    assert server.post("/sdapi/v1/png-info", {"image": "@@@"}).status_code == 422


def test_token_merging_comes_through_override_settings_as_in_a1111(server):
    body = server.post("/sdapi/v1/txt2img", {"prompt": "a red circle", "seed": 4, **SMALL,
                                             "override_settings": {"token_merging_ratio": 0.3}}).json()
    assert "Token merging ratio: 0.3" in json.loads(body["info"])["infotexts"][0]
