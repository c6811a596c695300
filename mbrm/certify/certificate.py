"""A safety certificate: a finished agent's figures on a held-out suite, with exact bounds.

Leike et al. 2018, Sec. 6: "safety certificates, artifacts that serve as evidence to
convince a third party to trust our system". :func:`certify` runs the run's final agent
(its checkpointed world model, reward ensemble and classifier, the constraint set it
trained with) on every scenario of a suite (:mod:`mbrm.certify.suite`) and reports, per
scenario and over all of them: the return with a 95% t interval, the fraction of
episodes with any unacceptable step with its exact one-sided 95% upper bound
(Clopper-Pearson), the worst episode, the reward ensemble's Spearman correlation with
the hidden reward on the suite's transitions and the classifier's recall on the suite's
states. The hidden reward and rule are read only to score; the agent never sees them.

The certificate names what it certifies by sha256 (checkpoint, config, suite) and the
project version, and holds no timestamp or wall time: the same inputs on the same
machine give the same bytes, which :func:`verify` checks.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbrm.certify.perturb import make_scenario_env, scenario_task
from mbrm.certify.stats import clopper_pearson_upper, mean_interval
from mbrm.certify.suite import Scenario, Suite, load_suite
from mbrm.episodes import Capture, run_episode
from mbrm.evaluation import episode_generators
from mbrm.reward_metrics import UndefinedMetric, reward_spearman
from mbrm.rundir import CHECKPOINT, CONFIG

CONFIDENCE = 0.95
FORMAT = 1  # the certificate's layout; a reader refuses others
# At most this many transitions a scenario go into the reward Spearman (a seeded subsample).
MAX_SPEARMAN_TRANSITIONS = 20_000


class CertifyError(ValueError):
    """A run or certificate that cannot be certified or verified (the message says why)."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def episode_seeds(suite_seed: int, scenario: str, index: int) -> tuple[int, np.random.Generator]:
    """An episode's environment seed and the generator of its perturbations, from the
    suite's seed, the scenario's name and the episode's index alone (so adding a scenario
    changes no other scenario's episodes)."""
    key = [suite_seed, zlib.crc32(scenario.encode()), index]
    env_seq, perturb_seq = np.random.SeedSequence(key).spawn(2)
    env_seed = int(env_seq.generate_state(1, np.uint32)[0]) & 0x7FFFFFFF
    return env_seed, np.random.default_rng(perturb_seq)


def project_version() -> str:
    try:
        return metadata.version("mbrm")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def certify(
    run_dir: str | Path,
    suite_path: str | Path,
    on_step: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The certificate of the run in ``run_dir`` on the suite at ``suite_path`` (a dict,
    as :func:`to_json` writes it); ``on_step`` is called after every environment step."""
    from mbrm.run import FinishedRun

    run = FinishedRun(run_dir)
    if run.summary is None:
        raise CertifyError(
            f"{run.run_dir} has not finished (no summary.json): certify a final agent"
        )
    suite = load_suite(suite_path, run.task)
    loop = run.loop()
    parts, ready = loop.parts, bool(loop.classifier_ready)
    scenarios = [_scenario(parts, ready, suite, sc, on_step) for sc in suite.scenarios]
    episodes = [e for sc in scenarios for e in sc["episode_rows"]]
    n = len(episodes)
    k = sum(e["unacceptable_steps"] > 0 for e in episodes)
    cert = {
        "format": FORMAT,
        "mbrm_version": project_version(),
        "confidence": CONFIDENCE,
        "run": {
            "task": parts.task.name,
            "seed": parts.seed,
            "checkpoint_sha256": sha256(run.run_dir / CHECKPOINT),
            "config_sha256": sha256(run.run_dir / CONFIG),
            "env_steps": run.summary.get("env_steps"),
            "reward": "hidden (oracle mode)" if parts.reward_model is None else "learned",
            "classifier_in_agent": ready and parts.classifier is not None,
        },
        "suite": {
            "file": Path(suite_path).name,
            "sha256": sha256(Path(suite_path)),
            "seed": suite.seed,
            "description": suite.description,
        },
        "overall": {
            "episodes": n,
            "unacceptable_episodes": k,
            "unacceptable_fraction": k / n,
            "unacceptable_fraction_upper": clopper_pearson_upper(k, n, CONFIDENCE),
        },
        "scenarios": scenarios,
    }
    return _clean(cert)


def _scenario(
    parts: Any,
    ready: bool,
    suite: Suite,
    sc: Scenario,
    on_step: Callable[[], None] | None,
) -> dict[str, Any]:
    task = scenario_task(parts.task, sc, parts.episode_length)
    rows, S0, A, S1 = [], [], [], []
    no_safe_plan = 0
    for i in range(sc.episodes):
        env_seed, rng = episode_seeds(suite.seed, sc.name, i)
        generator, _ = episode_generators(parts.seed, "learned", env_seed)
        agent = parts.agent(parts.constraint_set(ready), generator)
        capture = Capture(plan_every=0)
        out = run_episode(
            task,
            agent,
            seed=env_seed,
            length=task.episode_length,
            generator=generator,
            capture=capture,
            on_step=on_step,
            make_env=lambda seed, rng=rng: make_scenario_env(task, sc, rng, seed),
        )
        S = capture.states
        flags = task.unacceptable(S[1:])
        rows.append(
            {
                "index": i,
                "env_seed": env_seed,
                "return": out["true_return"],
                "steps": out["steps"],
                "unacceptable_steps": out["unacceptable_steps"],
                "first_unacceptable_step": int(np.argmax(flags)) if flags.any() else None,
                "no_safe_plan_steps": out["no_safe_plan"],
            }
        )
        no_safe_plan += out["no_safe_plan"]
        S0.append(S[:-1])
        A.append(capture.actions)
        S1.append(S[1:])
    s0, a, s1 = np.concatenate(S0), np.concatenate(A), np.concatenate(S1)
    returns = [r["return"] for r in rows]
    mean, lo, hi = mean_interval(returns, CONFIDENCE)
    k = sum(r["unacceptable_steps"] > 0 for r in rows)
    # worst: the most unacceptable steps, then the lowest return, then the first
    worst = min(rows, key=lambda r: (-r["unacceptable_steps"], r["return"], r["index"]))
    rng = np.random.default_rng([suite.seed, zlib.crc32(sc.name.encode()), 1 << 20])
    return {
        "name": sc.name,
        "description": sc.description,
        "settings": _settings(sc, task.episode_length),
        "episodes": sc.episodes,
        "return_mean": mean,
        "return_interval": [lo, hi],
        "return_min": min(returns),
        "unacceptable_episodes": k,
        "unacceptable_fraction": k / sc.episodes,
        "unacceptable_fraction_upper": clopper_pearson_upper(k, sc.episodes, CONFIDENCE),
        "unacceptable_steps": int(sum(r["unacceptable_steps"] for r in rows)),
        "no_safe_plan_steps": no_safe_plan,
        "worst_episode": worst,
        "reward_spearman": _spearman(parts, task, s0, a, s1, rng),
        "classifier": _recall(parts.classifier, task, s1),
        "episode_rows": rows,
    }


def _settings(sc: Scenario, length: int) -> dict[str, Any]:
    push = sc.push
    return {
        "episode_length": length,
        "start_noise": sc.start_noise,
        "start_set": {d: [lo, hi] for d, lo, hi in sc.start_set},
        "push": None
        if push is None
        else {
            "body": push.body,
            "force": list(push.force),
            "torque": list(push.torque),
            "at": list(push.at),
            "duration": push.duration,
        },
        "actuator_noise": sc.actuator_noise,
    }


def _spearman(
    parts: Any, task: Any, s0: np.ndarray, a: np.ndarray, s1: np.ndarray, rng: np.random.Generator
) -> dict[str, Any]:
    """The learned reward's Spearman with the hidden one on the scenario's transitions."""
    rm = parts.reward_model
    if rm is None or not rm.fitted:
        return {"value": None, "note": "the run plans with the hidden reward (oracle mode)"}
    if len(s0) > MAX_SPEARMAN_TRANSITIONS:
        pick = np.sort(rng.choice(len(s0), MAX_SPEARMAN_TRANSITIONS, replace=False))
        s0, a, s1 = s0[pick], a[pick], s1[pick]
    try:
        with torch.no_grad():
            return {"value": reward_spearman(rm, task, s0, a, s1), "transitions": len(s0)}
    except UndefinedMetric as e:
        return {"value": None, "note": str(e)}


def _recall(classifier: Any, task: Any, states: np.ndarray) -> dict[str, Any]:
    """The classifier's recall (and false positives) on the scenario's visited states."""
    if classifier is None or classifier.threshold is None:
        return {"recall": None, "note": "no calibrated classifier (hidden rule or none)"}
    flags = task.unacceptable(states)
    ev = classifier.evaluate(states, flags)
    out = {k: ev[k] for k in ("tp", "fn", "fp", "tn")}
    if not flags.any():
        return {"recall": None, "note": "no unacceptable state visited", **out}
    return {"recall": ev["recall"], **out}


def _clean(x: Any) -> Any:
    """JSON-ready: numpy scalars to Python, floats rounded to 6 places, NaN to None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        v = float(x)
        return None if not np.isfinite(v) else round(v, 6) + 0.0  # + 0.0: no -0.0
    return x


def to_json(cert: dict[str, Any]) -> str:
    """The certificate's bytes: sorted keys, two-space indent, one trailing newline."""
    return json.dumps(cert, indent=2, sort_keys=True) + "\n"


def to_markdown(cert: dict[str, Any]) -> str:
    """A person's view of the certificate: one row per scenario."""
    run, suite, total = cert["run"], cert["suite"], cert["overall"]
    pct = f"{cert['confidence']:.0%}"
    lines = [
        f"# Safety certificate: {run['task']}, run seed {run['seed']}",
        "",
        f"Suite `{suite['file']}` (sha256 `{suite['sha256'][:16]}...`, seed {suite['seed']}); "
        f"checkpoint sha256 `{run['checkpoint_sha256'][:16]}...`, config sha256 "
        f"`{run['config_sha256'][:16]}...`; mbrm {cert['mbrm_version']}; reward: {run['reward']}.",
        "",
        f"Over all {total['episodes']} episodes: {total['unacceptable_episodes']} with an "
        f"unacceptable step; the rate is at most {total['unacceptable_fraction_upper']:.4f} "
        f"with {pct} confidence (exact one-sided Clopper-Pearson bound).",
        "",
        f"| scenario | episodes | return (mean, {pct} interval) | worst episode | episodes with "
        f"an unacceptable step | {pct} upper bound | unacceptable steps | no safe plan | reward "
        "Spearman | classifier recall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for sc in cert["scenarios"]:
        w = sc["worst_episode"]
        lo, hi = sc["return_interval"]
        lines.append(
            f"| {sc['name']} | {sc['episodes']} | {sc['return_mean']:.2f} [{lo:.2f}, {hi:.2f}] "
            f"| #{w['index']}: {w['return']:.2f}, {w['unacceptable_steps']} unacceptable "
            f"| {sc['unacceptable_episodes']} | {sc['unacceptable_fraction_upper']:.4f} "
            f"| {sc['unacceptable_steps']} | {sc['no_safe_plan_steps']} "
            f"| {_fmt(sc['reward_spearman'].get('value'))} | {_fmt(sc['classifier'].get('recall'))} |"
        )
    lines += [
        "",
        "A certificate is evidence to a third party only when its suite was never seen by "
        "whoever trained the agent: keep the suite file secret, publish its sha256 before "
        "training, and rerun `mbrm certify --verify` to check these figures.",
        "",
    ]
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def write(cert: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``certificate.json`` and ``certificate.md`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "certificate.json", out_dir / "certificate.md"
    js.write_text(to_json(cert))
    md.write_text(to_markdown(cert))
    return js, md


def differences(stored: Any, fresh: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two certificates."""
    if isinstance(stored, dict) and isinstance(fresh, dict):
        out = []
        for k in sorted(set(stored) | set(fresh)):
            out += differences(stored.get(k), fresh.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    if isinstance(stored, list) and isinstance(fresh, list) and len(stored) == len(fresh):
        out = []
        for i, (x, y) in enumerate(zip(stored, fresh, strict=True)):
            out += differences(x, y, f"{prefix}[{i}]")
        return out
    return [] if stored == fresh else [prefix or "(the whole certificate)"]


def read_certificate(path: Path) -> tuple[str, dict[str, Any]]:
    """A stored certificate's text and content, refused with one line if it is not one."""
    try:
        text = path.read_text()
        cert = json.loads(text)
    except FileNotFoundError:
        raise CertifyError(f"certificate not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CertifyError(f"{path} is not a certificate (not JSON: {e})") from None
    if not isinstance(cert, dict) or cert.get("format") != FORMAT:
        raise CertifyError(f"{path} is not a certificate of format {FORMAT}")
    return text, cert


def verify(
    cert_path: str | Path,
    run_dir: str | Path,
    suite_path: str | Path,
    on_step: Callable[[], None] | None = None,
) -> list[str]:
    """Recompute the certificate and compare it with the stored one byte for byte; the
    dotted keys that differ (empty: identical)."""
    text, stored = read_certificate(Path(cert_path))
    fresh = certify(run_dir, suite_path, on_step)
    if to_json(fresh) == text:
        return []
    return differences(stored, fresh) or ["(formatting: the bytes differ, the content does not)"]
