"""The server's parts, made once per process: the store, the engine, the worker, the live view, and the
A1111 options (which model requests use by default, clip skip, image format) kept in a JSON file."""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from hayai import paths
from hayai.errors import HayaiError, RequestError
from hayai.files import replace_json
from hayai.server.live import PREVIEW_TYPES, Live, Previews

__all__ = ["ServerConfig", "ServerState", "KNOWN_OPTIONS"]

# A1111 options hayai acts on; others are kept and echoed (clients read and write them) but change nothing
KNOWN_OPTIONS = {"sd_model_checkpoint": None, "CLIP_stop_at_last_layers": 1, "samples_format": "png",
                 "img2img_fix_steps": False,
                 # live previews in /progress's current_image (A1111's defaults; hayai.server.live.Previews)
                 "live_previews_enable": True, "show_progress_every_n_steps": 10, "show_progress_type": "Approx NN"}


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 7860
    auth: tuple[tuple[str, str], ...] = ()
    cors_allow: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ()  # more Host names to answer when bound to loopback
    max_body_bytes: int = 64 * 1024 * 1024
    ui: bool = False  # the web UI at / (hayai serve turns it on; --no-ui leaves the API alone)
    engine_args: dict = field(default_factory=dict)  # Engine(**engine_args): device, vram, strategy, resident memory

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1")


class ServerState:
    """Everything a request handler needs. `start()` takes the home's server lock, puts back the jobs a killed
    server left running, and starts the worker; `stop()` ends it."""

    def __init__(self, config: ServerConfig, engine=None) -> None:
        from hayai.generation.engine import Engine
        from hayai.store import Store

        self.config = config
        self.store = engine.store if engine is not None else Store()
        self.engine = engine if engine is not None else Engine(store=self.store, **config.engine_args)
        self.catalog = self.engine.catalog
        self.live = Live()
        self.options_path = paths.hayai_home() / "server" / "options.json"
        self.options = {**KNOWN_OPTIONS, **self._read_options()}
        try:
            _check_previews(self.options)
        except RequestError as error:
            raise HayaiError(f"{self.options_path}: {error}; fix or delete it") from None
        self.live.previews = Previews.from_options(self.options)
        self.worker = None
        self._lock_file = None

    def start(self) -> list[str]:
        from hayai.server.worker import Worker

        self._lock_file = _take_lock(paths.hayai_home() / "server" / "server.lock", self.config)
        requeued = self.store.requeue_running_jobs()
        abandoned = self._drop_abandoned()
        self.worker = Worker(self.store, self.engine, self.live)
        self.worker.start()
        return [job for job in requeued if job not in abandoned]

    def _drop_abandoned(self) -> list[str]:
        """An A1111 client waits on its connection; after a restart nobody waits for a job it made that saves
        nothing, so running it would make images no one receives."""
        dropped = []
        for job in self.store.jobs(statuses=("queued",), limit=10_000):
            if job.api == "a1111" and not job.options.get("save"):
                self.store.cancel_queued_job(job.id, "the server restarted while an A1111 client waited for this job; "
                                                     "its connection is gone and the job saves no image")
                dropped.append(job.id)
        return dropped

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker.join(timeout=30)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- A1111 options ---------------------------------------------------------------------------
    def _read_options(self) -> dict:
        try:
            return json.loads(self.options_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            raise HayaiError(f"{self.options_path} is not readable JSON ({error}); fix or delete it") from None

    def set_options(self, changes: dict) -> None:
        from hayai.server.catalogs import check_model

        if "sd_model_checkpoint" in changes and changes["sd_model_checkpoint"] is not None:
            check_model(self.catalog, str(changes["sd_model_checkpoint"]))
        clip = changes.get("CLIP_stop_at_last_layers")
        if clip is not None and (not isinstance(clip, int) or isinstance(clip, bool) or not 1 <= clip <= 12):
            raise RequestError(f"CLIP_stop_at_last_layers={clip!r} must be a whole number from 1 to 12")
        if changes.get("samples_format") not in (None, "png", "jpg", "webp"):
            raise RequestError(f"samples_format={changes['samples_format']!r} must be png, jpg or webp")
        _check_previews(changes)
        self.options.update(changes)
        self.live.previews = Previews.from_options(self.options)
        self.options_path.parent.mkdir(parents=True, exist_ok=True)
        replace_json(self.options_path, self.options, indent=1, sort_keys=True)


def _check_previews(options: dict) -> None:
    """The live-preview options among `options`, or a RequestError naming the one that is not valid."""
    every = options.get("show_progress_every_n_steps")
    if every is not None and (isinstance(every, bool) or not isinstance(every, (int, float)) or every != int(every)
                              or every < -1):
        raise RequestError(f"show_progress_every_n_steps={every!r} must be a whole number of steps, -1 (at the end "
                           "of each batch) or more (0: no live previews)")
    if options.get("show_progress_type") not in (None, *PREVIEW_TYPES):
        raise RequestError(f"show_progress_type={options['show_progress_type']!r} must be one of "
                           f"{', '.join(PREVIEW_TYPES)}")
    if options.get("live_previews_enable") not in (None, True, False):
        raise RequestError(f"live_previews_enable={options['live_previews_enable']!r} must be true or false")


def _take_lock(path: Path, config: ServerConfig):
    """One server per hayai home: two would both run the queue's jobs on one device."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise HayaiError(f"another hayai server ({holder}) uses {paths.hayai_home()}; stop it first, or give this one "
                         "its own HAYAI_HOME") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {config.host}:{config.port}")
    handle.flush()
    return handle
