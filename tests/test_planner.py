"""The planner's choices for real architectures on simulated machines (no weights, no GPU needed)."""

from __future__ import annotations

import itertools

import pytest

from hayai.hardware import GIB, parse_device_spec
from hayai.memory.facts import facts_for_architecture
from hayai.memory.planner import PlanRequest, estimate, plan, safety_margin
from hayai.memory.strategies import Strategy, candidates

ARCHS = ("sd15", "sdxl", "sd35m")
DEVICES = {
    "cpu": "cpu 32GB",
    "4GB": "RTX 2060 4GB, PCIe 3.0 x16",
    "6GB": "RTX 2060 6GB, PCIe 3.0 x16",
    "8GB": "RTX 4060 8GB, PCIe 4.0 x8",
    "12GB": "RTX 3060 12GB, PCIe 4.0 x16",
    "24GB": "RTX 4090 24GB, PCIe 4.0 x16",
    "80GB": "H100 80GB, PCIe 5.0 x16",
}
SHAPES = [(side, batch) for side in (512, 1024) for batch in (1, 4)]


@pytest.fixture(scope="module")
def facts():
    return {name: facts_for_architecture(name) for name in ARCHS}


def _plan(facts, arch, device, side, batch, **kwargs):
    return plan(facts[arch], PlanRequest(side, side, batch, True, 20), parse_device_spec(DEVICES[device]), **kwargs)


@pytest.mark.parametrize("arch, device, shape", list(itertools.product(ARCHS, DEVICES, SHAPES)))
def test_the_choice_is_the_fastest_admissible_candidate_that_fits(facts, arch, device, shape):
    side, batch = shape
    result = _plan(facts, arch, device, side, batch)
    fitting = [e for e in result.candidates if e.fits]
    if not fitting:  # nothing fits: the leanest is tried, and the user is told why
        assert result.warnings and result.chosen.peak_bytes == min(e.peak_bytes for e in result.candidates)
        return
    assert result.chosen.fits and result.chosen.peak_bytes <= result.budget_bytes
    lossless = [e for e in fitting if e.strategy.lossless]
    if result.chosen.strategy.lossless:
        assert result.chosen.seconds == min(e.seconds for e in lossless)
    else:  # fp8 only when every lossless plan that fits streams weights or runs on the CPU
        assert all(e.strategy.placement in ("sequential_offload", "cpu") for e in lossless) or not lossless
        assert result.chosen.seconds < min((e.seconds for e in lossless), default=float("inf"))
    if device == "cpu":
        assert result.chosen.strategy.placement == "cpu"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("lossy", [False, True])
def test_more_memory_never_gives_a_slower_plan(facts, arch, lossy):
    """On one card, more memory only adds fitting candidates, so the fastest can only get faster.

    (With the default lossy rule it need not: fp8 is admitted only when the lossless best is slow.)
    """
    from hayai.hardware import capped

    card = parse_device_spec("RTX 4090 24GB")
    for side, batch in SHAPES:
        shape = PlanRequest(side, side, batch, True, 20)
        times = [plan(facts[arch], shape, capped(card, gib * GIB), allow_lossy=lossy).chosen
                 for gib in (4, 6, 8, 12, 16, 24)]
        fitting = [c.seconds for c in times if c.fits]
        assert fitting == sorted(fitting, reverse=True), (side, batch, [c.strategy.name for c in times])


def test_sd15_keeps_everything_resident_on_24gb(facts):
    for side, batch in SHAPES:
        assert _plan(facts, "sd15", "24GB", side, batch).chosen.strategy.placement == "resident"


def test_sd35_medium_1024_on_8gb_does_not_stream_layers_when_a_faster_plan_fits(facts):
    result = _plan(facts, "sd35m", "8GB", 1024, 1)
    assert result.chosen.strategy.placement != "sequential_offload"
    sequential = next(e for e in result.candidates if e.strategy.placement == "sequential_offload")
    assert result.chosen.seconds < sequential.seconds
    # resident cannot fit: the T5-XXL encoder alone is ~9.5 GB in half precision
    resident = next(e for e in result.candidates if e.strategy.name.startswith("resident"))
    assert not resident.fits


def test_sdxl_1024_fits_resident_on_24gb_but_not_on_8gb(facts):
    assert _plan(facts, "sdxl", "24GB", 1024, 1).chosen.strategy.placement == "resident"
    eight = _plan(facts, "sdxl", "8GB", 1024, 1)
    assert eight.chosen.strategy.placement != "resident" and eight.chosen.fits


def test_everything_fits_resident_on_80gb(facts):
    for arch in ARCHS:
        chosen = _plan(facts, arch, "80GB", 1024, 4).chosen.strategy
        assert chosen.placement == "resident" and not chosen.vae_tiling and not chosen.split_batch


def test_fp8_is_chosen_only_when_allowed_or_nothing_lossless_is_fast(facts):
    strict = _plan(facts, "sdxl", "4GB", 1024, 1, allow_lossy=False)
    assert strict.chosen.strategy.lossless
    lenient = _plan(facts, "sdxl", "4GB", 1024, 1, allow_lossy=True)
    assert lenient.chosen.seconds <= strict.chosen.seconds


def test_ladder_steps_down_to_leaner_strategies(facts):
    result = _plan(facts, "sdxl", "12GB", 1024, 4)
    after = result.ladder_after(result.chosen.strategy)
    peaks = {e.strategy: e.peak_bytes for e in result.candidates}
    assert after and all(peaks[s] <= peaks[result.chosen.strategy] for s in after)
    assert any(peaks[s] < peaks[result.chosen.strategy] for s in after)


def test_budget_keeps_a_safety_margin():
    card = parse_device_spec("RTX 4060 8GB")
    assert safety_margin(card) >= 256 * 1024**2
    assert card.free_bytes - safety_margin(card) < 8 * GIB - 0.4 * GIB


def test_offloading_trades_memory_for_time(facts):
    """Resident is the fastest and hungriest, sequential offload the slowest and leanest; every offload
    in between needs less than resident and more time."""
    card = parse_device_spec("RTX 4060 8GB, PCIe 4.0 x8")
    shape = PlanRequest(1024, 1024, 1, True, 20)
    for arch in ARCHS:
        plain = {s.placement: estimate(facts[arch], shape, card, s, 10**15) for s in candidates(card)
                 if not (s.fp8_storage or s.vae_tiling or s.split_batch) and s.placement != "cpu"}
        resident, sequential = plain.pop("resident"), plain.pop("sequential_offload")
        for name, e in plain.items():
            assert sequential.peak_bytes < e.peak_bytes < resident.peak_bytes, (arch, name)
            assert resident.seconds < e.seconds < sequential.seconds, (arch, name)


def test_cpu_plan_names_the_cpu_strategies():
    names = [s.name for s in candidates(parse_device_spec("cpu"))]
    assert names == ["cpu-float32", "cpu-float32+vae-tiling", "cpu-float32+vae-tiling+split"]
    assert Strategy.from_dict(Strategy(placement="cpu", device="cpu").to_dict()) == Strategy(placement="cpu", device="cpu")


def test_flop_counts_are_made_once_and_kept_in_the_store_for_the_next_process(facts, tmp_path, monkeypatch):
    from hayai.memory import costs
    from hayai.memory.planner import plan_keeping_counts
    from hayai.store import Store

    request, device = PlanRequest(320, 320, 1, True, 20), parse_device_spec(DEVICES["8GB"])
    monkeypatch.setattr(costs, "_FLOP_COUNTS", {})  # what other tests counted in this process is not in play
    with Store(tmp_path / "hayai.db") as store:
        first = plan_keeping_counts(store, facts["sd15"], request, device)
        kept = store.flop_counts()
    assert len(kept) == 2  # the denoiser and the VAE decoder at this latent size
    assert kept == costs.flop_counts()

    def no_counting(run):
        raise AssertionError("counted FLOPs that the store keeps")

    monkeypatch.setattr(costs, "_FLOP_COUNTS", {})  # a new process: nothing counted yet
    monkeypatch.setattr(costs, "_count_flops", no_counting)
    with Store(tmp_path / "hayai.db") as store:
        again = plan_keeping_counts(store, facts["sd15"], request, device)
    assert again.chosen == first.chosen and [e.seconds for e in again.candidates] == [e.seconds for e in first.candidates]

    import diffusers

    monkeypatch.setattr(costs, "_FLOP_COUNTS", {})
    monkeypatch.setattr(diffusers, "__version__", "0.0.1")  # another diffusers may build the model differently
    with Store(tmp_path / "hayai.db") as store, pytest.raises(AssertionError, match="counted FLOPs"):
        plan_keeping_counts(store, facts["sd15"], request, device)
