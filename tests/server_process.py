"""A real `hayai serve` process on a loopback port, for the server tests (no mocks of the server).

`ServerProcess(home, *args)` starts `python -m hayai serve` with its own $HAYAI_HOME on a free port and
waits until /hayai/v1/health answers; `stop()` ends it with SIGTERM, `kill()` with SIGKILL.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

START_TIMEOUT_S = 180  # torch's import alone takes seconds on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(self, home: Path, *args: str, port: int | None = None, env: dict | None = None) -> None:
        self.home = Path(home)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.home.parent / f"server-{self.port}.log"
        environment = {**os.environ, "HAYAI_HOME": str(self.home), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                       **(env or {})}
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "hayai", "serve", "--port", str(self.port),
                                          "--threads", "1", *args], stdout=log, stderr=subprocess.STDOUT, env=environment)
        self._wait_ready(args)

    def _wait_ready(self, args) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        auth = _auth_from(args)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hayai serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if requests.get(f"{self.url}/hayai/v1/health", timeout=5, auth=auth).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"hayai serve did not answer within {START_TIMEOUT_S} s:\n{self.log.read_text()}")

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=kwargs.pop("timeout", 120), **kwargs)

    def post(self, path: str, json=None, **kwargs) -> requests.Response:
        return requests.post(self.url + path, json=json, timeout=kwargs.pop("timeout", 300), **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return requests.delete(self.url + path, timeout=kwargs.pop("timeout", 60), **kwargs)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _auth_from(args) -> tuple[str, str] | None:
    args = list(args)
    if "--api-auth" in args:
        user, _, password = args[args.index("--api-auth") + 1].split(",")[0].partition(":")
        return user, password
    return None


def shapes_dataset(home: Path, name: str = "shapes", count: int = 6) -> Path:
    """A tiny captioned training dataset (the demo world's shapes) where a train job may name it."""
    from hayai.demo.shapes import samples

    folder = Path(home) / "datasets" / name
    folder.mkdir(parents=True)
    for i, (_, caption, image) in enumerate(samples(5, count)):
        image.save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(caption)
    return folder


def png_b64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def b64_image(text: str):
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(text)))


def wait_job(server: ServerProcess, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = server.get(f"/hayai/v1/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish within {timeout} s")
