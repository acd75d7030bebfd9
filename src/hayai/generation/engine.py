"""The engine: a request in, saved and logged images out, on the fastest plan that fits.

`Engine.generate` reads like a diffusers pipeline call, in numbered steps:
1. resolve the model the request names, 2. load it, or reuse it if resident (`resident.ResidentModels`),
3. resolve the request against the model (defaults, sampler, random seed), 4. plan how to run it on
this device and place the pipeline accordingly (with the execution levers that measurements made here
show pay, `hayai.speed.execution`), 5. run the pipeline once per batch, timing each phase,
stepping down to a leaner strategy and retrying with the same seeds if memory runs out, 6. save every
image atomically with its A1111 infotext and the full request, 7. log the run and remember the
strategy that worked.

The pipeline call itself is the plain diffusers call (see `execute.pipeline_kwargs`), so an image from
the engine is pixel-identical to one from diffusers with the same settings (unless an execution lever,
measured to stay within its pixel tolerance, is on: the image's record names it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from hayai import paths
from hayai.errors import HayaiError, RequestError
from hayai.generation.execute import OutOfMemoryInPhase
from hayai.generation.imagefile import next_index
from hayai.generation.kinds import BatchRun, kind_of, plan_request
from hayai.generation.options import Cancelled, RunOptions
from hayai.generation.request import GenerationRequest
from hayai.generation.resident import DEFAULT_FRACTION, ResidentModels, expected_bytes, weights_bytes
from hayai.generation.results import GeneratedImage, GenerationResult, ProgressCallback, ProgressEvent
from hayai.generation.saving import finish_image, request_from_image
from hayai.generation.timing import PeakMemory, PhaseTimer
from hayai.hardware import DeviceSpec, cap_memory, host_memory, probe
from hayai.lora import AppliedLora, LoraSet, LoraSpec, combine_specs, find_lora
from hayai.lora.catalog import list_loras
from hayai.memory.apply import apply_execution, apply_strategy, encode_device, free_memory, is_out_of_memory, return_to_host
from hayai.memory.facts import facts_from_pipeline
from hayai.memory.planner import Plan, plan_keeping_counts
from hayai.memory.strategies import Strategy, candidates
from hayai.models.card import recommended_settings
from hayai.models.catalog import Catalog, is_placeholder, source_hash
from hayai.models.components import denoiser_of
from hayai.models.families import FAMILY_INFO, Family
from hayai.models.loading import ModelSource, load_pipeline, native_size
from hayai.prompts.parser import parse_prompt
from hayai.speed import execution as execution_levers
from hayai.speed import openvino, openvino_cache, regional_compile
from hayai.speed.levers import active_levers
from hayai.speed.few_step import for_model as few_step_for_model
from hayai.speed.few_step import for_request as few_step_for
from hayai.speed.presets import FEW_STEP_PRESETS
from hayai.store.recording import recorded_run
from hayai.store.speed_measurements import nearest

__all__ = ["Engine", "GenerationResult", "GeneratedImage", "LoadedModel", "ProgressEvent", "pipeline_kwargs"]

from hayai.generation.execute import pipeline_kwargs  # noqa: E402  (re-exported: the documented mapping)


@dataclass
class LoadedModel:
    source: ModelSource
    pipe: object
    sha256: str
    load_dtype: str  # the dtype the weights were loaded in
    base_scheduler_config: dict
    native_size: tuple[int, int]
    facts: object  # hayai.memory.facts.ModelFacts
    loras: LoraSet | None  # the LoRAs patched into this pipeline's weights (None with the pipeline dropped)
    strategy: Strategy | None = None  # how the pipeline is placed now (None: as loaded, on the CPU)
    lora_specs: tuple[LoraSpec, ...] = ()  # what `loras` holds now
    execution: frozenset[str] = frozenset()  # the execution levers on the pipeline now (hayai.speed.execution)
    applied_loras: list[AppliedLora] = field(default_factory=list)
    derived: dict = field(default_factory=dict)  # the other kinds' pipelines over these modules (kinds.base)

    @property
    def family(self) -> Family:
        return self.source.family

    @property
    def flow_matching(self) -> bool:
        return FAMILY_INFO[self.source.family].flow_matching

    @property
    def placeholder(self) -> bool:
        return is_placeholder(self.source)

    @property
    def compiled(self) -> bool:
        """Whether the pipeline's denoiser is compiled (the `compile` lever): it stays so until dropped."""
        return self.pipe is not None and regional_compile.is_compiled(denoiser_of(self.pipe))

    @property
    def random_architecture(self) -> bool:
        """A real architecture with random weights (`arch:...`): built on meta, materialised when placed."""
        return self.source.kind == "architecture"


class Engine:
    """Generates images. Keeps the models it loaded resident, so a series of requests loads each once.

    `device`: a `DeviceSpec`, "cpu"/"cuda"/"mps", or None for the best device found. `vram` caps the
    device's memory (bytes; on CUDA the allocator itself is capped, so the cap is real). `strategy` and
    `allow_lossy` are the defaults of every call's `RunOptions` (a strategy forced by name instead of the
    planner's choice; fp8 storage allowed: None = only when nothing lossless is fast); a call's options
    override them without changing the engine, so one engine serves callers that want different ones.
    `resident_bytes` is the host RAM the resident models' weights may take together (None: half the
    memory available now; 0: only the model in use, each switch loads anew); only the model in use is
    placed on the accelerator. Generation runs on one thread at a time; `resident()` and
    `unload_all()` may be called from any thread.
    """

    def __init__(self, *, store=None, device: DeviceSpec | str | None = None, vram: int | None = None,
                 strategy: str | None = None, allow_lossy: bool | None = None, allow_pickle: bool = False,
                 resident_bytes: int | None = None):
        from hayai.store import Store

        self.store = store if store is not None else Store()
        self.catalog = Catalog(self.store)
        self.device_spec = _pick_device(device)
        self.device_spec = cap_memory(self.device_spec, vram)  # (None lifts a cap an earlier Engine set)
        self.forced_strategy = strategy
        self.allow_lossy = allow_lossy
        self.allow_pickle = allow_pickle
        if resident_bytes is None:
            resident_bytes = int(DEFAULT_FRACTION * host_memory()[1])
        self._resident = ResidentModels(resident_bytes, park=self._park, drop=self._drop_pipe,
                                        measure=lambda loaded: weights_bytes(loaded.pipe) if loaded.pipe is not None else 0)

    @property
    def load_dtype(self) -> str:
        return self.device_spec.half_dtype if self.device_spec.accelerator else "float32"

    # -- 1 + 2: resolve and load -----------------------------------------------------------------
    def load(self, model: str | None = None, *, model_config: str | None = None,
             progress: ProgressCallback | None = None, source: ModelSource | None = None) -> LoadedModel:
        """The model `model` names (or `source`, already resolved from the catalog): the resident one if
        there is one, else loaded (evicting least recently used models to make room) and kept resident.
        It becomes the active model: the one active before leaves the accelerator."""
        if source is None:
            source = self.catalog.resolve(model, allow_pickle=self.allow_pickle, config=model_config)
        loaded = self._resident.get(source)
        if loaded is None:
            self._resident.make_room(lambda: expected_bytes(source, self.load_dtype))
            emit = progress or (lambda event: None)
            emit(ProgressEvent("load", 0, 1, source.name))
            pipe = self._load_pipe(source)
            loaded = LoadedModel(
                source=source, pipe=pipe, sha256=source_hash(self.store, source), load_dtype=self.load_dtype,
                base_scheduler_config=dict(pipe.scheduler.config), native_size=native_size(pipe),
                facts=facts_from_pipeline(pipe, source.family), loras=LoraSet(pipe, source.family, resolver=self._find_lora),
            )
            self._resident.add(loaded)
            emit(ProgressEvent("load", 1, 1, source.name))
        self._resident.activate(loaded)
        return loaded

    def resident(self) -> list[dict]:
        """The models kept in memory, most recently used first: name, path, bytes (their weights), last
        used (Unix time), active (the one placed for running), in use (by a running request), strategy."""
        return self._resident.listing()

    def unload_all(self) -> list[str]:
        """Let go of every resident model not in use by a running request; returns their names."""
        return self._resident.unload_all()

    @property
    def resident_budget_bytes(self) -> int:
        """The host RAM the resident models' weights may take together."""
        return self._resident.budget_bytes

    def _park(self, loaded: LoadedModel) -> bool:
        """Leave the accelerator to another model: its pipeline back to host RAM (True), or False when its
        placement cannot be undone (the cache then drops it)."""
        strategy = loaded.strategy
        if loaded.pipe is None or strategy is None or strategy.device == "cpu":
            return True  # already all in host RAM
        if not return_to_host(loaded.pipe, strategy, loaded.load_dtype):
            return False
        loaded.strategy = None  # on the CPU, as loaded: the next run places it anew
        free_memory()
        return True

    def _load_pipe(self, source: ModelSource, strategy: Strategy | None = None):
        """Files load to the CPU in `load_dtype`. An architecture is built on the meta device until a
        strategy places it; then its weights are created once, in the strategy's dtype, directly on the
        device that keeps them (the accelerator when resident, else the CPU), so memory is not spent twice."""
        import torch

        if source.kind != "architecture":
            return load_pipeline(source, torch_dtype=getattr(torch, self.load_dtype))
        if strategy is None:
            return load_pipeline(source, device="meta")
        device = strategy.device if strategy.placement in ("resident", "cpu") else "cpu"
        return load_pipeline(source, torch_dtype=getattr(torch, strategy.dtype), device=device)

    # -- 4: plan and place -----------------------------------------------------------------------
    def plan_for(self, loaded: LoadedModel, request: GenerationRequest,
                 options: RunOptions | None = None) -> tuple[Plan, Strategy, str]:
        """The plan for a resolved request, and the strategy to start with (and why)."""
        options = options or self.run_options()
        the_plan = plan_keeping_counts(self.store, loaded.facts, plan_request(request), self.device_spec,
                                       allow_lossy=options.allow_lossy)
        if options.strategy:
            return the_plan, self.strategy_named(options.strategy), f"forced: {options.strategy}"
        remembered = self.store.recall_strategy(self._memory_key(loaded, request))
        if remembered is not None:
            strategy = Strategy.from_dict(remembered)
            if strategy in [e.strategy for e in the_plan.candidates]:
                return the_plan, strategy, f"{strategy.name}: what last ran to the end here for this model, size and batch"
        return the_plan, the_plan.strategy, the_plan.reason

    def with_speed_preset(self, request: GenerationRequest, source: ModelSource) -> GenerationRequest:
        """`request` with what its speed preset adds besides knobs: `fast` adds the catalog's few-step LoRA for
        the model (by name at weight 1, so the infotext and `--from` carry it), unless the request already has
        one or the model itself is a few-step model."""
        if request.speed not in FEW_STEP_PRESETS or few_step_for(request, source, self._find_lora) is not None:
            return request
        found = few_step_for_model(source.family, lambda: source_hash(self.store, source), list_loras(self.store))
        if found is None:
            raise RequestError(
                f"speed={request.speed!r} needs a few-step LoRA for {source.name!r}, and the LoRA catalog has none made "
                f"from it or for {source.family.value} models: make one with `hayai train distill --model {source.name} "
                "--dataset FOLDER` (a folder of images like the model's own, e.g. its generations), or put an LCM, TCD, "
                "Hyper-SD or Lightning LoRA for this family in the LoRA folder")
        return dataclasses.replace(request, loras=(*request.loras, f"{found[0].name}:1"))

    def execution_for(self, loaded: LoadedModel, request: GenerationRequest, options: RunOptions | None = None,
                      plan=None, steps_run: int | None = None) -> tuple[frozenset[str], list[str]]:
        """The execution levers for a resolved request (the options', else those that measurements made here
        for this model at the nearest size show pay, and, with its `plan`, that memory holds), and why;
        `steps_run` is how many steps a batch denoises (img2img: strength x steps), by default its steps."""
        options = options or self.run_options()
        blockers = _openvino_blockers(request)
        if options.execution is not None:
            names = execution_levers.check(options.execution)
            if "openvino" in names:
                openvino.check_family(loaded.family)
                if self.device_spec.accelerator:
                    raise RequestError(f"execution lever 'openvino' runs on the CPU; this engine runs on "
                                       f"{self.device_spec.torch_device}: run without it")
                if blockers:
                    raise RequestError(f"execution lever 'openvino': {openvino.left_out(blockers)}; run without it")
            if "compile" in names:
                regional_compile.check(loaded.facts.denoiser_class)
            return names, ["asked for by the caller"]
        measured = nearest(self.store.speed_measurements(loaded.sha256, self.device_spec.key),
                           request.width, request.height, request.steps)
        images, steps = request.batch_size * request.batch_count, steps_run or request.steps
        threads = self.device_spec.threads  # a CPU step's speed scales with them, as the plan's (0: an accelerator)
        verdict = openvino.decide(measured, model_hash=loaded.sha256, family=loaded.family, width=request.width,
                                  height=request.height, steps=steps, images=images,
                                  on_cpu=not self.device_spec.accelerator, blockers=blockers,
                                  min_psnr_db=execution_levers.MIN_PSNR_DB, threads=threads, plan=plan,
                                  unet_params=loaded.facts.by_role("denoiser")[0].params)
        compiling = regional_compile.decide(measured, denoiser_class=loaded.facts.denoiser_class, width=request.width,
                                            height=request.height, steps=steps, images=images,
                                            compiled=loaded.compiled, threads=threads)
        return execution_levers.choose(measured, compile=compiling, openvino=verdict)

    def recommended_for(self, request: GenerationRequest, source: ModelSource):
        """(the settings that fill what `request` leaves unset, the few-step method it uses or None): the model
        card's, under those of a few-step LoRA or model, which need their own sampler, steps and CFG."""
        few_step = few_step_for(request, source, self._find_lora)
        return {**recommended_settings(source), **(few_step.recommended if few_step else {})}, few_step

    def run_options(self, **changes) -> RunOptions:
        """This engine's defaults (its forced strategy, its lossy permission) with `changes`: the options of a
        call that sets only some of them (a sweep's progress, a server job's cancel token)."""
        return dataclasses.replace(RunOptions(strategy=self.forced_strategy, allow_lossy=self.allow_lossy), **changes)

    def strategy_named(self, name: str) -> Strategy:
        """The strategy called `name` (or the first with that placement) on this device."""
        options = candidates(self.device_spec)
        for strategy in options:
            if name in (strategy.name, strategy.placement):
                return strategy
        names = ", ".join(s.name for s in options)
        raise RequestError(f"strategy={name!r} is not available on this device; choose one of: {names}")

    def _find_lora(self, name: str) -> Path:
        return find_lora(name, self.store)

    def _prepare(self, loaded: LoadedModel, strategy: Strategy, specs: tuple[LoraSpec, ...], partial: bool,
                 execution: frozenset[str], size: tuple[int, int]) -> list[dict]:
        """Patch the LoRAs in, place the pipeline as `strategy` says and put the `execution` levers on (those
        that apply under it), reloading only when needed.

        LoRAs are patched into the weights before placement. A placed pipeline takes new LoRA weights in
        place when its weights are whole tensors somewhere (resident, CPU, model offload); streamed or
        fp8-stored weights, or another strategy, mean a fresh load (hooks are not undone). Execution levers
        go on and off in place (OpenVINO compiles once per size), except `compile`, which torch cannot undo: a
        compiled pipeline that must run without it is loaded again. Returns what the levers did worth recording.
        """
        execution = execution_levers.usable(execution, strategy)
        if (loaded.pipe is not None and loaded.strategy == strategy and loaded.lora_specs == specs
                and loaded.execution == execution
                and ("openvino" not in execution or openvino.ready(denoiser_of(loaded.pipe), *size,
                                                                  vae_scale=loaded.pipe.vae_scale_factor))):
            return []
        patchable = strategy.placement in ("resident", "te_cpu", "model_offload", "cpu") and not strategy.fp8_storage
        fresh = loaded.strategy is not None and (loaded.strategy != strategy or not patchable)
        fresh = fresh or (loaded.compiled and "compile" not in execution)
        # dropped after an out-of-memory error or an eviction, or an architecture still on the meta device
        if fresh or loaded.pipe is None or (loaded.random_architecture and _on_meta(loaded.pipe)):
            self._drop_pipe(loaded)
            loaded.pipe = self._load_pipe(loaded.source, strategy)
            loaded.loras = LoraSet(loaded.pipe, loaded.family, resolver=self._find_lora)
        loaded.applied_loras = loaded.loras.apply(list(specs), partial=partial)
        loaded.lora_specs = specs
        if loaded.strategy != strategy:
            apply_strategy(loaded.pipe, strategy)
            loaded.strategy = strategy
        done = []
        if execution or loaded.execution:  # (again after new LoRA weights, which may not keep the format)
            import torch

            target = dict(family=loaded.family, model_hash=loaded.sha256, width=size[0], height=size[1],
                          threads=torch.get_num_threads())
            done = apply_execution(loaded.pipe, execution, openvino=target if "openvino" in execution else None)
            loaded.execution = execution
        return done

    @staticmethod
    def _drop_pipe(loaded: LoadedModel) -> None:
        """Let go of every reference to the pipeline (and its LoRA set) and free its memory, so the next
        one is built in the room it leaves rather than beside it."""
        loaded.pipe = loaded.loras = None
        loaded.applied_loras, loaded.lora_specs, loaded.strategy, loaded.execution = [], (), None, frozenset()
        loaded.derived.clear()  # the other kinds' pipelines hold the same modules
        free_memory()

    def _memory_key(self, loaded: LoadedModel, request: GenerationRequest) -> tuple[str, str, int, int, int]:
        return (loaded.sha256, self.device_spec.key, request.width, request.height, request.batch_size)

    # -- the run ---------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest, options: RunOptions | None = None, *,
                 progress: ProgressCallback | None = None, save: bool | None = None) -> GenerationResult:
        """Make the images `request` asks for, as `options` says (`progress` and `save` are shorthands)."""
        options = options or self.run_options()
        if progress is not None or save is not None:
            options = dataclasses.replace(options, progress=progress or options.progress,
                                          save=options.save if save is None else save)
        emit = options.progress or (lambda event: None)
        kind = kind_of(request)
        timer = PhaseTimer(sync=self._sync)
        memory = PeakMemory(self._torch_device())
        memory.reset()
        source = self.catalog.resolve(request.model, allow_pickle=self.allow_pickle, config=request.model_config)
        request, input_size = kind.prepare(request, source.family)
        request = self.with_speed_preset(request, source)
        # everything the model's family decides is checked before a load (64 px stands in for a native size)
        recommended, few_step = self.recommended_for(request, source)
        kind.check(request.resolve(source.family, input_size or (64, 64), recommended=recommended), source.family)
        with timer.phase("load"):
            loaded = self.load(source=source, progress=emit)  # resolved once, above
        with self._resident.in_use(loaded):  # not evicted by another thread while it runs
            return self._generate(loaded, request, kind=kind, input_size=input_size, recommended=recommended,
                                  few_step=few_step, options=options, emit=emit, timer=timer, memory=memory)

    def _generate(self, loaded: LoadedModel, request: GenerationRequest, *, kind, input_size, recommended, few_step,
                  options: RunOptions, emit, timer: PhaseTimer, memory: PeakMemory) -> GenerationResult:
        """Steps 3 to 7 of `generate`, with the model loaded."""
        resolved = request.resolve(loaded.family, input_size or loaded.native_size, recommended=recommended)
        kind.check(resolved, loaded.family)
        requested_loras = [LoraSpec.parse(text) for text in resolved.loras]
        specs = tuple(combine_specs(requested_loras, parse_prompt(resolved.prompt).loras
                                    + parse_prompt(resolved.negative_prompt).loras))
        the_plan, strategy, reason = self.plan_for(loaded, resolved, options)
        execution, _ = self.execution_for(loaded, resolved, options, the_plan, kind.steps_run(resolved))
        predicted = next((e.seconds for e in the_plan.candidates if e.strategy == strategy), the_plan.chosen.seconds)
        emit(ProgressEvent("plan", 0, 1, strategy.name, seconds=predicted * resolved.batch_count))
        seeds = resolved.seeds()
        images: list[GeneratedImage] = []
        events: list[dict] = [{"plan": reason, **({"execution": sorted(execution)} if execution else {})}]
        interrupted = False
        with recorded_run(self.store, "generate", request=resolved.to_dict(), model=loaded.source.name,
                          model_hash=loaded.sha256, device=self.device_spec.torch_device) as record:
            record.seeds, record.events = seeds, events
            try:
                out_dir = Path(resolved.output_dir).expanduser() if resolved.output_dir else paths.outputs_dir()
                if options.first_index is not None:
                    index = options.first_index
                else:
                    index = next_index(out_dir) if options.save else 0
                per_batch = kind.steps_run(resolved)
                total_steps = per_batch * resolved.batch_count
                for batch in range(resolved.batch_count):
                    batch_seeds = seeds[batch * resolved.batch_size : (batch + 1) * resolved.batch_size]
                    run = BatchRun(loaded, timer, emit, total_steps, batch * per_batch, cancel=options.cancel)
                    try:
                        pil_images = self._run_with_recovery(loaded, kind, the_plan, strategy if batch == 0 else loaded.strategy,
                                                             specs, resolved, batch_seeds, run, events, execution)
                    except Cancelled as stop:
                        events.append({"event": stop.how, "batch": batch})
                        if stop.how == "skip":
                            continue
                        interrupted = True
                        break
                    for offset, (seed, image) in enumerate(zip(batch_seeds, pil_images)):
                        position = batch * resolved.batch_size + offset
                        if options.keep is not None and position not in options.keep:
                            continue
                        with timer.phase("save"):
                            generated = finish_image(image, resolved, self._model_record(loaded), seed, position, offset,
                                                     out_dir, index, options.save, self._runtime_record(loaded),
                                                     loras=loaded.applied_loras, requested_loras=requested_loras)
                        if generated.path is not None:
                            record.image(generated.path, seed)
                        images.append(generated)
                        index += 1
                        emit(ProgressEvent("save", len(images), len(options.keep) if options.keep else len(seeds),
                                           str(generated.path or "")))
                if interrupted:
                    record.status, record.error = "interrupted", "interrupted: the images finished before were kept"
                else:
                    self.store.remember_strategy(self._memory_key(loaded, resolved), loaded.strategy.to_dict())
            finally:
                reading = memory.read()
                record.timings, record.peak_memory_bytes = timer.as_dict(), reading.peak_bytes
        warnings = list(the_plan.warnings) + [w for applied in loaded.applied_loras for w in applied.warnings]
        warnings += few_step.warnings(resolved) if few_step else []
        warnings += [openvino_cache.eviction_warning(e) for e in events if e.get("evicted")]
        if loaded.random_architecture:
            warnings.append(f"{loaded.source.name} has random weights: its images are noise, but its time and memory "
                            "are those of the real model")
        if loaded.placeholder:
            warnings.append(
                "no model is installed: this image comes from a tiny placeholder with random weights, so it is noise. "
                "Add a model with `hayai models add PATH`."
            )
        return GenerationResult(
            record.run_id, resolved, images, loaded.source.name, loaded.sha256, loaded.family, loaded.strategy.device,
            loaded.strategy.dtype, timer.as_dict(), reading, loaded.placeholder, loaded.strategy.name, reason, events[1:],
            warnings, loras=[applied.to_dict() for applied in loaded.applied_loras], interrupted=interrupted,
        )

    def _run_with_recovery(self, loaded, kind, the_plan, strategy, specs, request, seeds, run: BatchRun, events,
                           execution: frozenset[str]):
        """Place the pipeline as `strategy` says and run one batch of `kind`; out of memory while placing or
        running, drop the pipeline, step down the plan's ladder and run again with the same seeds."""
        start_steps = run.done_steps
        while True:
            try:
                phase = "placement"
                with run.timer.phase("load"):
                    events += self._prepare(loaded, strategy, specs, request.lora_partial, execution,
                                            (request.width, request.height))
                run.done_steps = start_steps
                run.encode_on = encode_device(loaded.pipe, loaded.strategy)
                return kind.run(run, request, seeds)
            except Exception as error:
                if not is_out_of_memory(error) and not isinstance(error, OutOfMemoryInPhase):
                    raise
                phase = getattr(error, "phase", phase)
                leaner = the_plan.ladder_after(strategy)
                if not leaner:
                    raise HayaiError(
                        f"out of memory during {phase} even with the leanest strategy ({strategy.name}); "
                        "lower the resolution or the batch size"
                    ) from error
                events.append({"event": "out_of_memory", "phase": phase, "strategy": strategy.name, "next": leaner[0].name})
            # outside the except block, whose traceback holds the failed run's frames (and so its pipeline)
            self._drop_pipe(loaded)
            strategy = leaner[0]

    def _model_record(self, loaded: LoadedModel) -> dict:
        return {"name": loaded.source.name, "sha256": loaded.sha256, "family": loaded.family.value,
                "path": str(loaded.source.path), "hub_id": loaded.source.hub_id}

    def _runtime_record(self, loaded: LoadedModel) -> dict:
        import torch

        return {"device": loaded.strategy.device, "dtype": loaded.strategy.dtype, "strategy": loaded.strategy.name,
                "threads": torch.get_num_threads(), **({"execution": sorted(loaded.execution)} if loaded.execution else {})}

    # -- reproducing an image --------------------------------------------------------------------
    def request_from_image(self, image_path: Path) -> tuple[GenerationRequest, set[int] | None, list[str]]:
        return request_from_image(image_path, store=self.store)

    def reproduce(self, image_path: Path, options: RunOptions | None = None, *,
                  progress: ProgressCallback | None = None, **overrides) -> GenerationResult:
        request, keep, warnings = request_from_image(image_path, store=self.store)
        if overrides:
            request = dataclasses.replace(request, **overrides)
        options = dataclasses.replace(options or self.run_options(), keep=frozenset(keep) if keep else None)
        result = self.generate(request, options, progress=progress)
        result.warnings[:0] = warnings
        return result

    # -- device helpers --------------------------------------------------------------------------
    def _torch_device(self):
        import torch

        return torch.device(self.device_spec.torch_device)

    def _sync(self) -> None:
        if self.device_spec.kind in ("cuda", "rocm"):
            import torch

            torch.cuda.synchronize()


def _openvino_blockers(request: GenerationRequest) -> tuple[str, ...]:
    """What in a resolved request changes the torch UNet, which OpenVINO's converted copy would not follow:
    LoRAs (patched into the torch weights) and the UNet speed levers (hooks inside it)."""
    loras = request.loras or parse_prompt(request.prompt).loras or parse_prompt(request.negative_prompt).loras
    return (("LoRAs",) if loras else ()) + tuple(name for name in active_levers(request) if name != "block_cache")


def _on_meta(pipe) -> bool:
    """Whether a pipeline's weights are still on the meta device (an architecture not yet placed)."""
    denoiser = denoiser_of(pipe)
    return next(denoiser.parameters()).device.type == "meta"


def _pick_device(device: DeviceSpec | str | None) -> DeviceSpec:
    if isinstance(device, DeviceSpec):
        return device
    machine = probe()
    if device is None:
        return machine.best
    for spec in machine.devices:
        if device in (spec.kind, spec.torch_device) or (device == "cuda" and spec.kind == "rocm"):
            return spec
    found = ", ".join(spec.torch_device for spec in machine.devices)
    raise RequestError(f"device={device!r} is not available here; found: {found}")
