"""The ``device`` setting: every tensor the library creates names its device.

The CUDA path cannot run on a CPU-only machine, so placement is checked where it is
decided. :class:`DeviceSpy` watches every tensor-creating torch function that code in
``mbrm/``, ``planners/`` or ``constraints/`` calls: a call that names no device would
land on torch's default device, not the configured one. The spy records the call site
and creates the tensor on the ``meta`` device instead (as ``torch.set_default_device
("meta")`` would, but for the library's calls only: torch's own internals, such as the
optimiser's step counter, keep their default), so such a tensor cannot go unnoticed
even where the site list is not read. A tiny training run, model fits and planning
steps with ``device=cpu`` then must create no tensor except on the CPU.
"""

from __future__ import annotations

import functools
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

from mbrm.checkpoint import load_checkpoint, save_checkpoint
from mbrm.device import device_of, resolve_device, to_host
from mbrm.run import ConfigValueError, build_parts, compose_config, run_settings, run_signature
from planners import make_planner
from tests.test_loop import PLANNER, run, tiny_cfg

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = tuple(str(ROOT / p) + "/" for p in ("mbrm", "planners", "constraints"))
# Modules whose tensors may rely on the default device (none: the MuJoCo side names the
# CPU); their sites would be recorded but created where they ask.
ELSEWHERE: tuple[str, ...] = ()
CONSTRUCTORS = _device_constructors()
SYNCS = {"item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"}


def _library_site(depth: int = 2) -> str | None:
    """``path:line`` of the frame that called the torch function, if it is library code."""
    frame = sys._getframe(depth)
    name = frame.f_code.co_filename
    if not name.startswith(LIBRARY):
        return None
    return f"{Path(name).relative_to(ROOT)}:{frame.f_lineno}"


class DeviceSpy(TorchFunctionMode):
    """Records where the library creates tensors without naming a device, and the
    device of every tensor the library creates (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.implicit: Counter[str] = Counter()  # "path:line func" -> calls
        self.devices: Counter[str] = Counter()  # device type -> tensors created

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        site = _library_site() if func in CONSTRUCTORS else None
        if site is None:
            return func(*args, **kwargs)
        if kwargs.get("device") is None and kwargs.get("out") is None:  # out= names it too
            self.implicit[f"{site} {func.__name__}"] += 1
            if not site.startswith(ELSEWHERE):
                kwargs["device"] = "meta"  # what the default device would do
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            self.devices[out.device.type] += 1
        return out

    def check(self) -> None:
        owned = sorted(s for s in self.implicit if not s.startswith(ELSEWHERE))
        assert not owned, "tensors created on the default device:\n" + "\n".join(owned)
        assert set(self.devices) <= {"cpu"}, self.devices


def spied(fn):
    """Run ``fn()`` under a :class:`DeviceSpy`; the sites come first in any failure."""
    spy = DeviceSpy()
    try:
        with spy:
            out = fn()
    except Exception:
        spy.check()  # a redirected tensor broke the run: name its site
        raise
    spy.check()
    return out, spy


# ------------------------------------------------------------------ the setting


def test_auto_is_the_cpu_without_cuda_and_cuda_with_it():
    assert resolve_device("auto", cuda_count=lambda: 0) == torch.device("cpu")
    assert resolve_device("auto", cuda_count=lambda: 2) == torch.device("cuda")
    assert resolve_device("cpu", cuda_count=lambda: 2) == torch.device("cpu")
    assert resolve_device("cuda:1", cuda_count=lambda: 2) == torch.device("cuda:1")


@pytest.mark.parametrize(
    "name, count, text",
    [
        ("cuda", 0, "device=cuda: torch sees no CUDA device"),
        ("cuda:0", 0, "device=cuda:0: torch sees no CUDA device"),
        ("cuda:2", 2, r"device=cuda:2: torch sees 2 CUDA device\(s\), cuda:0 to cuda:1"),
        ("gpu", 1, "device must be one of auto, cpu, cuda, cuda:N; got 'gpu'"),
        ("cuda:x", 1, "device must be one of auto, cpu, cuda, cuda:N; got 'cuda:x'"),
    ],
)
def test_a_device_this_machine_lacks_is_one_line_naming_the_choices(name, count, text):
    with pytest.raises(ValueError, match=text) as err:
        resolve_device(name, cuda_count=lambda: count)
    assert "\n" not in str(err.value)
    assert "auto, cpu, cuda" in str(err.value) or "cuda:0 to" in str(err.value)


def test_the_config_refuses_a_bad_device_in_one_line(monkeypatch):
    assert run_settings(compose_config([])).device == "auto"
    with pytest.raises(ConfigValueError, match="device must be one of auto, cpu, cuda, cuda:N"):
        run_settings(compose_config(["device=gpu"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigValueError, match="device=cuda: torch sees no CUDA device") as err:
        run_settings(compose_config(["device=cuda"]))
    assert "\n" not in str(err.value) and "auto, cpu, cuda, cuda:N" in str(err.value)


def test_the_command_line_refuses_a_bad_device_with_status_2(capsys, tmp_path, monkeypatch):
    from mbrm.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "device=tpu"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "device must be one of auto, cpu, cuda, cuda:N" in err[0], err
    assert list(tmp_path.iterdir()) == []  # refused before any run folder


def test_the_device_is_no_part_of_the_run_signature():
    a, b = (
        run_settings(tiny_cfg("reacher_keepout", "cem", f"device={d}")) for d in ("cpu", "auto")
    )
    from mbrm.tasks import get_task

    task = get_task("reacher_keepout")
    assert run_signature(task, a) == run_signature(task, b)
    assert "device" not in str(run_signature(task, a))


def test_the_parts_are_built_on_the_configured_device():
    parts = build_parts(run_settings(tiny_cfg("reacher_keepout", "cem", "device=cpu")))
    for model in (parts.world_model, parts.reward_model.net, parts.classifier.net):
        assert device_of(model) == torch.device("cpu")
    assert parts.planner.device == torch.device("cpu") and parts.planner.low.device.type == "cpu"


def test_to_host_keeps_cpu_tensors_as_they_are():
    t = torch.ones(3)
    out = to_host({"a": t, "b": [t, 1.5], "c": (t,)})
    assert out["a"] is t and out["b"][0] is t and out["b"][1] == 1.5 and out["c"][0] is t


# ------------------------------------------------------------------ placement under the spy


@pytest.mark.parametrize(
    "planner, extra",
    [
        ("cem", ()),
        ("mcts", ()),
        ("icem", ("qp_filter.enabled=true", "experiment.propagation=tsinf")),
        ("cem", ("reward_model=oracle", "constraints=oracle", "experiment.dtype=bfloat16")),
    ],
)
def test_a_tiny_run_creates_every_tensor_on_the_configured_device(planner, extra, tmp_path):
    cfg = tiny_cfg("reacher_keepout", planner, "device=cpu", *extra)
    summary, spy = spied(lambda: run(cfg, tmp_path))
    assert np.isfinite(summary["eval_return"])
    assert spy.devices["cpu"] > 0  # the spy saw the run's tensors


def _fitted_models(torch_gen):
    """The world model, reward ensemble and classifier of a tiny run, fitted on its data."""
    from mbrm.feedback.segments import Preference
    from mbrm.replay import collect_random

    parts = build_parts(run_settings(tiny_cfg("reacher_keepout", "cem", "device=cpu")))
    buf = collect_random(parts.task, 2, seed=0, episode_length=20)
    parts.world_model.fit(*buf.arrays(), generator=torch_gen, max_epochs=2)
    segs = buf.sample_segments(6, 4, np.random.default_rng(0))
    pairs = [(a, b, Preference.LEFT) for a, b in zip(segs[::2], segs[1::2], strict=True)]
    parts.reward_model.fit(pairs, generator=torch_gen, epochs=2)
    s = buf.arrays()[0]
    flags = np.arange(len(s)) % 3 == 0
    parts.classifier.fit(s, flags, generator=torch_gen, epochs=2)
    parts.classifier.calibrate(s, flags, alpha=0.1)
    return parts, buf


def test_fits_and_every_propagation_stay_on_the_configured_device(torch_gen):
    (parts, buf), _ = spied(lambda: _fitted_models(torch_gen))
    s, a, s2 = buf.arrays()

    def use():
        wm = parts.world_model
        for propagation in ("ts1", "tsinf", "expectation"):
            for dtype in ("float32", "bfloat16"):
                states = wm.rollout(
                    torch.as_tensor(s[0], dtype=torch.float32),
                    torch.zeros(3, 4, 2),
                    particles=3,
                    generator=torch_gen,
                    propagation=propagation,
                    dtype=dtype,
                )
                assert states.device.type == "cpu" and states.shape == (3, 3, 5, s.shape[1])
        wm.one_step_error(s, a, s2)
        parts.reward_model.predict(s[:5], a[:5], s2[:5])
        parts.reward_model.preference_probability(
            *buf.sample_segments(2, 4, np.random.default_rng(1))
        )
        parts.classifier.evaluate(s, np.arange(len(s)) % 3 == 0)

    spied(use)


def test_a_rollout_drawn_ahead_equals_one_drawn_step_by_step(torch_gen, monkeypatch):
    """What a model on another device does (every draw of the rollout first, on the CPU
    generator, then one copy) gives the same samples as the CPU's draws in place."""
    import mbrm.world_model_draws as draws

    parts, buf = _fitted_models(torch_gen)
    state = torch.as_tensor(buf.arrays()[0][3], dtype=torch.float32)
    actions = torch.rand(5, 6, 2, generator=torch_gen) * 2 - 1
    for propagation in ("ts1", "tsinf"):
        out = {}
        for ahead in (False, True):
            monkeypatch.setattr(draws, "draws_ahead", lambda g, d, ahead=ahead: ahead)
            gen = torch.Generator().manual_seed(7)
            out[ahead] = parts.world_model.rollout(
                state, actions, particles=3, generator=gen, propagation=propagation
            )
            out[ahead, "after"] = torch.rand(1, generator=gen)  # the same draws were used
        assert torch.equal(out[False], out[True]), propagation
        assert torch.equal(out[False, "after"], out[True, "after"])


def _host_reads(fn, modules: tuple[str, ...]) -> Counter:
    """Reads of a tensor's value on the host (``item``, ``float()``, ``.cpu()``...) that
    code in ``modules`` makes while ``fn()`` runs: each is a device sync on a GPU."""
    roots = tuple(str(ROOT / m) for m in modules)
    seen: Counter[str] = Counter()

    class Reads(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in SYNCS:
                frame = sys._getframe(1)
                if frame.f_code.co_filename.startswith(roots):
                    seen[f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}"] += 1
            return func(*args, **(kwargs or {}))

    with Reads():
        fn()
    return seen


@pytest.mark.parametrize("planner", sorted(PLANNER))
def test_a_planning_step_reads_back_per_iteration_never_per_imagined_step(planner, torch_gen):
    """The models and the imagination never read a value back while imagining; the
    planner reads a few per iteration (CEM's elite count) or batch (MCTS's tree), the
    same number for a longer horizon; the agent moves the plan back once per step."""
    parts, buf = _fitted_models(torch_gen)
    models = ("mbrm/world_model.py", "mbrm/world_model_draws.py", "mbrm/imagination.py",
              "mbrm/reward_model.py", "mbrm/reward_net.py", "mbrm/nn.py", "constraints")  # fmt: skip
    low, high = parts.task.action_bounds
    state = buf.arrays()[0][1]
    counts = {}
    for horizon in (3, 6):
        extra = ("device=cpu", f"planner.horizon={horizon}")
        settings = run_settings(tiny_cfg("reacher_keepout", planner, *extra))
        parts.planner = make_planner(settings.planner, low, high, "cpu")
        agent = parts.agent(parts.constraint_set(classifier_ready=True), torch_gen)
        step = functools.partial(agent.act, state, torch_gen)
        step()  # warm the inference caches
        assert not _host_reads(step, models)
        planner_reads = _host_reads(step, ("planners",))
        agent_reads = _host_reads(step, ("mbrm/agent.py", "mbrm/device.py"))
        counts[horizon] = sum(planner_reads.values()), sum(agent_reads.values())
        info = step()[1]
        for t in (info.plan.action, info.plan.plan, info.plan.top_states, info.plan.top_scores):
            assert t.device.type == "cpu"
    assert counts[3] == counts[6], counts


# ------------------------------------------------------------------ checkpoints across devices


def _as_if_saved_on_a_gpu(monkeypatch):
    """torch.save that tags every storage as cuda:0, as a checkpoint written on a GPU is;
    loading such a file without a map_location fails on a CPU-only machine."""
    import torch.serialization as ser

    monkeypatch.setattr(ser, "location_tag", lambda storage: "cuda:0")


def test_a_checkpoint_saved_on_a_gpu_loads_on_the_cpu(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    with monkeypatch.context() as m:
        _as_if_saved_on_a_gpu(m)
        save_checkpoint(path, {"w": torch.arange(3.0)}, {"task": "t"})
    if not torch.cuda.is_available():  # the file really says cuda
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    ckpt = load_checkpoint(path, {"task": "t"})
    assert ckpt["w"].device.type == "cpu" and torch.equal(ckpt["w"], torch.arange(3.0))


def test_a_run_from_a_gpu_resumes_and_is_read_on_the_cpu(tmp_path, monkeypatch):
    """A run whose config says cuda and whose checkpoint was written on a GPU continues
    here: the loop on ``auto`` (the CPU), every model loaded onto the CPU."""
    from omegaconf import OmegaConf

    from mbrm.run import FinishedRun

    cfg = tiny_cfg("reacher_keepout", "cem", "device=cpu", "experiment.iterations=1")
    run(cfg, tmp_path)
    ckpt = tmp_path / "checkpoint.pt"
    payload = torch.load(ckpt, weights_only=True)
    with monkeypatch.context() as m:
        _as_if_saved_on_a_gpu(m)
        torch.save(payload, ckpt)
    saved = OmegaConf.load(tmp_path / "config.yaml")
    saved.device = "cuda"
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    finished = FinishedRun(tmp_path)
    assert finished.settings.device == "auto"
    for model in (finished.world_model(), finished.reward_model().net, finished.classifier().net):
        assert device_of(model) == torch.device("cpu")
    loop = finished.loop()  # resumed from the checkpoint
    assert loop.iteration == 2 and device_of(loop.world_model) == torch.device("cpu")
    assert torch.equal(
        loop.world_model.state_dict()["net.linears.0.weight"],
        payload["world_model"]["net.linears.0.weight"],
    )
    assert FinishedRun(tmp_path, device="cpu").settings.device == "cpu"
