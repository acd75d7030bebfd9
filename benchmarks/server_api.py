"""What going through `hayai serve` costs, against the Python API on the same machine (issue 17).

    python benchmarks/server_api.py [--pairs 10] [--jobs 20] [--rounds 3] [--switches 50] [--write]

The built-in demo model, 128x128, 8 steps, Euler, one torch thread in both processes; each server is a
real `hayai serve` process (tests/server_process.py) with its own temporary HAYAI_HOME, and this process
has another. Three measurements:
- `api_overhead`: one request with a fixed seed through `Engine.generate(request, RunOptions(save=False))`
  here and `POST /sdapi/v1/txt2img` (the HTTP round trip, PNG base64 included) on a warm server, both
  warmed by one untimed call, then `pairs` back-to-back pairs, alternating which goes first. Medians, the
  median of the pairs' ratios (server / python), the engine's own phases on each side (load .. save, from
  the result's timings; the rest of a server call is queue, HTTP and PNG), and whether the two images
  have the same RGB bytes.
- `queue_throughput`: `jobs` requests (seeds differing) posted at once to `POST /hayai/v1/jobs`, timed
  from the first post until all have finished (`GET /hayai/v1/health` polled every 50 ms), against the
  same requests run one after another by `Engine.generate` here; both save their images (a job of the
  hayai API always does). `rounds` rounds, alternating which side goes first; the ratio (server / python,
  of images per second) is the median of the rounds' own. Also checked: the jobs are distinct, all done,
  none lost or run twice (one image each, each with its own seed), and the first job's image equals the
  in-process one.
- `model_switching`: a copy of the demo model in the server's models folder, then `switches` txt2img
  requests alternating between the two with `override_settings.sd_model_checkpoint`, reading the server
  process's RSS (psutil) after each, on two servers up side by side: a default one (resident-model cache)
  and one with `--resident-memory 0` (one model kept: every switch loads); each request goes to both,
  alternating which first, and the ratio is the median of those pairs (cached / reload). RSS after switch
  1, 10 and the last, growth from 10 to the last, median request time, the requests that loaded a model
  (their `load` timing over 50 ms) and their median load, and the resident models `GET /sdapi/v1/memory` lists at the end.

Prints JSON; `--write` stores it in results/server_api_<machine>.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
from harness import describe_machine, publish
from server_process import ServerProcess, b64_image

FIELDS = {"prompt": "a red circle on a blue background", "negative_prompt": "", "steps": 8, "cfg_scale": 7.0,
          "width": 128, "height": 128, "sampler": "Euler"}  # hayai's names; A1111 says sampler_name


def _a1111(seed: int, **extra) -> dict:
    payload = {**FIELDS, "seed": seed, **extra}
    payload["sampler_name"] = payload.pop("sampler")
    return payload


def _request(seed: int):
    from hayai.generation.request import GenerationRequest

    return GenerationRequest(**FIELDS, seed=seed)


def _rgb(image) -> bytes:
    return image.convert("RGB").tobytes()


def _timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    value = call()
    return time.perf_counter() - start, value


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def _engine_s(timings: dict) -> float:
    return sum(timings.get(phase, 0.0) for phase in ("load", "text_encode", "vae_encode", "denoise", "vae_decode", "save"))


def api_overhead(engine, server: ServerProcess, pairs: int, seed: int = 1234) -> dict:
    from hayai.generation.options import RunOptions

    request, payload = _request(seed), _a1111(seed)

    def python():
        result = engine.generate(request, RunOptions(save=False))
        return result.images[0].image, _engine_s(result.timings)

    def http():
        response = server.post("/sdapi/v1/txt2img", json=payload)
        response.raise_for_status()
        body = response.json()
        return b64_image(body["images"][0]), _engine_s(json.loads(body["info"])["hayai"]["timings"])

    ours, theirs = python()[0], http()[0]  # warm: the model is loaded on each side
    times = {"python": [], "server": []}
    inside = {"python": [], "server": []}  # the engine's own phases (load .. save) of each call
    for index in range(pairs):
        for side in (("python", "server") if index % 2 == 0 else ("server", "python")):
            seconds, (_, engine_s) = _timed(python if side == "python" else http)
            times[side].append(seconds)
            inside[side].append(engine_s)
    ratios = [s / p for s, p in zip(times["server"], times["python"])]
    return {"pairs": pairs, "python_median_s": _median(times["python"]), "server_median_s": _median(times["server"]),
            "ratio_server_to_python": _median(ratios),
            "server_extra_median_s": _median([s - p for s, p in zip(times["server"], times["python"])]),
            "engine_phases_median_s": {side: _median(values) for side, values in inside.items()},
            "python_runs_s": [round(t, 4) for t in times["python"]], "server_runs_s": [round(t, 4) for t in times["server"]],
            "images_identical": _rgb(ours) == _rgb(theirs)}


def _queue_round(server: ServerProcess, seeds: list[int]) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    ids = []
    for seed in seeds:
        response = server.post("/hayai/v1/jobs", json={"request": {**FIELDS, "seed": seed}})
        response.raise_for_status()
        ids.append(response.json()["id"])
    while True:  # /health is a light poll; the jobs are read once it says the queue is idle
        health = server.get("/hayai/v1/health").json()
        if not health["queued"] and health["running"] is None:
            finished = [server.get(f"/hayai/v1/jobs/{i}").json() for i in ids]
            if all(job["status"] not in ("queued", "running") for job in finished):
                return time.perf_counter() - start, finished
        time.sleep(0.05)


def queue_throughput(engine, server: ServerProcess, jobs: int, rounds: int) -> dict:
    from hayai.generation.options import RunOptions

    seeds = list(range(1000, 1000 + jobs))
    server_s, python_s, checks = [], [], []
    for index in range(rounds):
        for side in (("server", "python") if index % 2 == 0 else ("python", "server")):
            if side == "python":
                seconds, results = _timed(lambda: [engine.generate(_request(s), RunOptions(save=True)) for s in seeds])
                python_s.append(seconds)
                continue
            seconds, finished = _queue_round(server, seeds)
            server_s.append(seconds)
            images = [image for job in finished for image in (job.get("result") or {}).get("images", [])]
            checks.append({"distinct_jobs": len({job["id"] for job in finished}),
                           "done": sum(job["status"] == "done" for job in finished),
                           "run_once": sum(job["attempts"] == 1 for job in finished),
                           "images": len(images), "distinct_seeds": len({image["seed"] for image in images}),
                           "seeds_as_submitted": [image["seed"] for image in images] == seeds})
    first = _job_image(server, finished[0]["id"])
    python_rate, server_rate = jobs / statistics.median(python_s), jobs / statistics.median(server_s)
    return {"jobs": jobs, "rounds": rounds, "python_s": [round(t, 3) for t in python_s],
            "server_s": [round(t, 3) for t in server_s], "python_images_per_s": round(python_rate, 4),
            "server_images_per_s": round(server_rate, 4),
            "ratio_server_to_python": _median([p / s for p, s in zip(python_s, server_s)]),  # of rates, per round
            "checks_per_round": checks,
            "all_jobs_done_once": all(c["distinct_jobs"] == c["done"] == c["run_once"] == c["images"] == c["distinct_seeds"] == jobs
                                      and c["seeds_as_submitted"] for c in checks),
            "first_image_identical": _rgb(first) == _rgb(results[0].images[0].image)}


def _job_image(server: ServerProcess, job_id: str):
    from PIL import Image

    response = server.get(f"/hayai/v1/jobs/{job_id}/images/0")
    response.raise_for_status()
    return Image.open(io.BytesIO(response.content))


def _switch(server: ServerProcess, process, title: str, seed: int) -> tuple[float, float, int]:
    """One txt2img on `title`: (request seconds, the engine's load seconds, the server's RSS after)."""
    payload = _a1111(seed, override_settings={"sd_model_checkpoint": title})
    seconds, response = _timed(lambda: server.post("/sdapi/v1/txt2img", json=payload))
    response.raise_for_status()
    load = json.loads(response.json()["info"])["hayai"]["timings"].get("load", 0.0)
    return seconds, load, process.memory_info().rss


def model_switching(scratch: Path, switches: int) -> dict:
    """Both servers up at once, each request i sent to one and then the other (alternating which first)."""
    import psutil

    from hayai.models.catalog import builtin_source

    servers, runs = {}, {}
    try:
        for mode, args in (("cached", ()), ("reload", ("--resident-memory", "0"))):
            home = scratch / f"switch-{mode}" / "home"
            shutil.copytree(builtin_source().path, home / "models" / "hayai-shapes-copy")  # found by name in models_dir()
            servers[mode] = server = ServerProcess(home, *args)
            titles = sorted(model["title"] for model in server.get("/sdapi/v1/sd-models").json())
            runs[mode] = {"server_args": list(args), "models": titles, "process": psutil.Process(server.proc.pid),
                          "rss": [], "request_s": [], "load_s": []}
            runs[mode]["rss_at_start_bytes"] = runs[mode]["process"].memory_info().rss
        for index in range(switches):
            for mode in (("cached", "reload") if index % 2 == 0 else ("reload", "cached")):
                run = runs[mode]
                seconds, load, rss = _switch(servers[mode], run["process"], run["models"][index % 2], index)
                run["request_s"].append(round(seconds, 4))
                run["load_s"].append(round(load, 4))
                run["rss"].append(rss)
        resident = {mode: server.get("/sdapi/v1/memory").json()["hayai"]["resident_models"]
                    for mode, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    modes = {}
    for mode, run in runs.items():
        rss, last = run["rss"], switches - 1
        loads = [t for t in run["load_s"] if t > 0.05]  # a resident model's "load" takes milliseconds
        modes[mode] = {
            "server_args": run["server_args"], "models": run["models"], "rss_at_start_bytes": run["rss_at_start_bytes"],
            "rss_after_switch_1_bytes": rss[0], "rss_after_switch_10_bytes": rss[min(9, last)],
            "rss_after_last_switch_bytes": rss[last], "rss_growth_10_to_last_bytes": rss[last] - rss[min(9, last)],
            "median_request_s": _median(run["request_s"]), "requests_that_loaded": len(loads),
            "median_load_s": _median(loads) if loads else None,
            "resident_models_at_end": [model["name"] for model in resident[mode]],
            "rss_after_each_switch_bytes": rss, "request_s": run["request_s"], "load_s": run["load_s"],
        }
    ratios = [c / r for c, r in zip(runs["cached"]["request_s"], runs["reload"]["request_s"])]
    return {"switches": switches, **modes, "ratio_request_cached_to_reload": _median(ratios)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--switches", type=int, default=50)
    parser.add_argument("--note", default="", help="recorded with the machine, e.g. the commit of src measured")
    parser.add_argument("--write", action="store_true", help="store in results/server_api_<machine>.json")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="hayai-server-bench-") as scratch:
        scratch = Path(scratch)
        os.environ["HAYAI_HOME"] = str(scratch / "python-home")  # this process's outputs and history
        from hayai.generation.engine import Engine

        engine = Engine()
        print("starting the server ...", file=sys.stderr)
        with ServerProcess(scratch / "server-home") as server:
            print("API overhead ...", file=sys.stderr)
            overhead = api_overhead(engine, server, args.pairs)
            print("queue throughput ...", file=sys.stderr)
            throughput = queue_throughput(engine, server, args.jobs, args.rounds)
        del engine
        switching = model_switching(scratch, args.switches)
    stem, description = describe_machine("cpu", 1)
    output = {"what": "hayai serve against the Python API: overhead, queue throughput, RSS over model switches (issue 17)",
              "machine": description + (f"; {args.note}" if args.note else ""), "torch": torch.__version__, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
              "model": "hayai-shapes (built-in demo)", "request": FIELDS, "threads": 1,
              "api_overhead": overhead, "queue_throughput": throughput, "model_switching": switching}
    return publish(output, f"server_api_{stem}", args.write)


if __name__ == "__main__":
    main()
