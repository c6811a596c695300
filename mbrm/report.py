"""``report.md`` and ``report.html`` for a run directory: plots, videos and tables.

Plots (Leike et al. 2018, Sec. 6 and Fig. 4-5):

* true vs predicted return over training -- a widening gap is reward hacking;
* learned vs true reward on held-out states -- reward alignment;
* labels used by segment source; unacceptable outcomes and blocked plans over time;
* the side-constraint classifier's confusion matrix and recall on the agent's states.

A panel whose model the run does not have (a hidden reward, no classifier) is left
out; one whose data do not exist yet says so. The evaluation videos of the learned
agent (``videos/``, :mod:`mbrm.video`) are linked, the first as a GIF inline;
``report.html`` shows all of it on one page (plots embedded, videos beside it).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from mbrm.video import list_videos, video_frame, video_gif

# metrics.csv columns shown in report.html (all of them are in the file)
METRIC_COLUMNS = (
    "iteration",
    "phase",
    "true_return",
    "predicted_return",
    "unacceptable_steps",
    "no_safe_plan",
    "blocked",
    "labels",
    "reward_accuracy",
    "reward_spearman",
    "classifier_recall",
    "wm_holdout_mse",
    "seconds",
)
Panel = Callable[[Axes], None]


def _read_metrics(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} has no metrics.csv: is it a training run directory?")
    with open(path) as f:
        return list(csv.DictReader(f))


def _col(rows: list[dict[str, str]], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows])


def _has(rows: list[dict[str, str]], key: str) -> bool:
    return bool(np.isfinite(_col(rows, key)).any())


def _episodes_axis(ax: Axes, it: np.ndarray) -> None:
    """Whole episodes on the x axis, every panel over the same range."""
    ax.set_xlabel("iteration (episode)")
    ax.set_xlim(np.nanmin(it) - 0.5, np.nanmax(it) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _counts_axis(ax: Axes, top: float) -> None:
    ax.set_ylim(0, max(1.0, 1.05 * top))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _empty(ax: Axes, title: str, text: str) -> None:
    """A panel with nothing to plot yet: its title and why, no blank axes."""
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, color="0.35", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------- training panels


def _training_panels(rows: list[dict[str, str]]) -> list[Panel]:
    it = _col(rows, "iteration")
    explore = it[[r.get("phase") == "explore" for r in rows]]

    def returns(ax: Axes) -> None:
        if len(explore):
            ax.axvspan(explore.min() - 0.5, explore.max() + 0.5, color="0.92", label="exploration")
        ax.plot(it, _col(rows, "true_return"), "o-", label="true return (hidden)")
        ax.set_ylabel("true return")
        ax.set_title("true vs predicted return (a gap means reward hacking)")
        _episodes_axis(ax, it)
        ax.legend(loc="best")
        if _has(rows, "predicted_return"):
            ax2 = ax.twinx()
            pred = _col(rows, "predicted_return")
            ax2.plot(it, pred, "s--", color="tab:orange", label="predicted return")
            ax2.set_ylabel("predicted return (standardised units)")
            ax2.legend(loc="best")

    def outcomes(ax: Axes) -> None:
        bad, no_plan = _col(rows, "unacceptable_steps"), _col(rows, "no_safe_plan")
        ax.bar(it, bad, color="tab:red", label="unacceptable steps")
        ax.plot(it, no_plan, "k^-", label="no-safe-plan steps")
        ax.set_title("unacceptable outcomes and no-safe-plan steps")
        ax.set_ylabel("steps per episode")
        _counts_axis(ax, float(np.nanmax([*bad, *no_plan, 0])))
        _episodes_axis(ax, it)
        ax.legend()

    def labels(ax: Axes) -> None:
        sources = sorted(
            {k[len("labels_") :] for r in rows for k in r if k.startswith("labels_") and r[k]}
        )
        if not sources or not np.nansum([_col(rows, f"labels_{s}") for s in sources]):
            _empty(ax, "labels used, by segment source", "no labels yet")
            return
        bottom = np.zeros(len(rows))
        for src in sources:
            v = np.nan_to_num(_col(rows, f"labels_{src}"))
            ax.bar(it, v, bottom=bottom, label=src)
            bottom += v
        ax.set_title("labels used, by segment source (cumulative)")
        _counts_axis(ax, float(bottom.max()))
        _episodes_axis(ax, it)
        ax.legend()

    def quality(ax: Axes) -> None:
        keys = [
            k for k in ("reward_accuracy", "reward_spearman", "classifier_recall") if _has(rows, k)
        ]
        if not keys:
            text = "no labels yet: the reward model and\nclassifier have no held-out figures"
            _empty(ax, "held-out model quality", text)
            return
        for key in keys:
            ax.plot(it, _col(rows, key), "o-", label=key)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title("held-out model quality")
        _episodes_axis(ax, it)
        ax.legend()

    return [returns, outcomes, labels, quality]


# --------------------------------------------------------------------------- model panels


def _model_panels(run_dir: Path) -> tuple[list[Panel], dict[str, float]]:
    """Load the run's models and compare them with the hidden truth on its own states."""
    import torch
    from scipy.stats import spearmanr

    from mbrm.run import FinishedRun

    run = FinishedRun(run_dir)
    task, reward_model, classifier = run.task, run.reward_model(), run.classifier()
    s, a, s2 = run.replay().arrays()
    pick = np.random.default_rng(0).choice(len(s), min(len(s), 3000), replace=False)
    out: dict[str, float] = {}
    panels: list[Panel] = []
    if reward_model is not None:  # a hidden reward has nothing to compare
        title = "learned vs true reward on visited states"
        if not reward_model.fitted:
            text = "no labels yet: the reward model is not fitted"
            panels.append(partial(_empty, title=title, text=text))
        else:
            true_r = task.true_reward(s[pick], a[pick], s2[pick])
            pred, _ = reward_model.predict(
                *(torch.as_tensor(x[pick], dtype=torch.float32) for x in (s, a, s2))
            )
            pred = pred.numpy()
            constant = np.ptp(pred) == 0 or np.ptp(true_r) == 0  # no rank correlation to take
            out["spearman"] = float("nan") if constant else float(spearmanr(pred, true_r).statistic)
            title = f"{title} (Spearman {out['spearman']:.3f})"
            panels.append(partial(_scatter, x=true_r, y=pred, title=title))
    if classifier is not None:  # a hidden rule has nothing to compare
        title = "classifier on visited states"
        if classifier.threshold is None:
            text = "not calibrated yet: too few\nunacceptable labels so far"
            panels.append(partial(_empty, title=title, text=text))
        else:
            ev = classifier.evaluate(s, task.unacceptable(s))
            out.update(recall=float(ev["recall"]), threshold=float(ev["threshold"]))
            panels.append(partial(_confusion, ev=ev, title=title))
    return panels, out


def _scatter(ax: Axes, x: np.ndarray, y: np.ndarray, title: str) -> None:
    ax.scatter(x, y, s=4, alpha=0.4)
    ax.set_title(title)
    ax.set_xlabel("true reward (hidden)")
    ax.set_ylabel("learned reward (standardised)")


def _confusion(ax: Axes, ev: dict[str, Any], title: str) -> None:
    cm = np.array([[ev["tn"], ev["fp"]], [ev["fn"], ev["tp"]]])
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        dark = v > cm.max() / 2
        ax.text(j, i, str(int(v)), ha="center", va="center", color="white" if dark else "black")
    ax.set_xticks([0, 1], ["acceptable", "unacceptable"])
    ax.set_yticks([0, 1], ["acceptable", "unacceptable"])
    ax.set_xlabel("classifier says")
    ax.set_ylabel("truth (hidden)")
    ax.set_title(f"{title} (recall {ev['recall']:.2f})")


def _figure(panels: list[Panel], path: Path) -> None:
    """Panels three to a row, a short last row centred: no empty panel."""
    n = len(panels)
    per_row = 2 if n == 4 else min(n, 3)
    rows = math.ceil(n / per_row)
    fig = Figure(figsize=(5.4 * per_row, 4.5 * rows))
    grid = fig.add_gridspec(rows, 2 * per_row)
    for i, panel in enumerate(panels):
        r, c = divmod(i, per_row)
        in_row = min(per_row, n - r * per_row)
        start = 2 * c + (per_row - in_row)  # centre a short row
        panel(fig.add_subplot(grid[r, start : start + 2]))
    fig.tight_layout()
    fig.savefig(path, dpi=90)


# --------------------------------------------------------------------------- the documents


def _score(summary: dict[str, Any]) -> str:
    score = summary["normalised_score"]
    if isinstance(score, float) and math.isnan(score):
        return summary.get("normalised_score_note", "undefined")
    return f"{score:.3f}"


def _summary_rows(summary: dict[str, Any], models: dict[str, float]) -> list[tuple[str, str]]:
    rows = []
    if summary:
        s = summary
        rows += [
            ("environment steps", str(s["env_steps"])),
            ("true return, evaluation (mean of episodes)", f"{s['eval_return']:.2f}"),
            (
                "random policy / reference agent (same world model)",
                f"{s['random_return']:.2f} / {s['oracle_return']:.2f}",
            ),
            ("normalised score", _score(s)),
            (
                "unacceptable steps: evaluation / training / random policy",
                f"{s['eval_unacceptable_steps']} / {s['train_unacceptable_steps']} / "
                f"{s['random_unacceptable_steps']}",
            ),
            ("labels by kind", json.dumps(s["labels"])),
            ("labels by source", json.dumps(s["labels_by_source"])),
            ("planning seconds per step", f"{s['plan_seconds_per_step']:.3f}"),
        ]
    if "spearman" in models:
        rows.append(("reward Spearman on visited states", f"{models['spearman']:.3f}"))
    if "recall" in models:
        name = f"classifier recall on visited states (threshold {models['threshold']:.3f})"
        rows.append((name, f"{models['recall']:.3f}"))
    return rows


def _gif(run_dir: Path, videos: list[Path]) -> Path | None:
    """A short GIF of the first video (made again when the video is newer)."""
    if not videos:
        return None
    gif = videos[0].with_suffix(".gif")
    if not gif.exists() or gif.stat().st_mtime < videos[0].stat().st_mtime:
        video_gif(videos[0], gif)
    return gif


def _markdown(title: str, table: list[tuple[str, str]], run_dir: Path, videos, gif) -> str:
    lines = [f"# {title}", ""]
    if table:
        lines += [
            "| figure | value |",
            "|---|---|",
            *(f"| {k} | {v.replace('|', '/')} |" for k, v in table),
            "",
        ]
    lines += ["![report](report.png)", ""]
    if videos:
        rel = gif.relative_to(run_dir).as_posix()
        lines += ["## Evaluation videos (learned agent)", "", f"![{videos[0].stem}]({rel})", ""]
        lines += ["| episode | video | chosen plans: imagined vs real |", "|---|---|---|"]
        for v in videos:
            plans = v.with_name(f"{v.stem}_plans.png")
            strip = f"[{plans.name}](videos/{plans.name})" if plans.exists() else "-"
            lines.append(f"| {v.stem} | [{v.name}](videos/{v.name}) | {strip} |")
        lines.append("")
    lines.append(
        "Per-episode figures: `metrics.csv`. Labels: `feedback.sqlite`. Page: `report.html`."
    )
    return "\n".join(lines) + "\n"


def _html(title: str, table, rows: list[dict[str, str]], run_dir: Path, videos) -> str:
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>",
        "body{font-family:system-ui,sans-serif;margin:24px auto;padding:0 16px;",
        "max-width:1500px;color:#222}.wide{overflow-x:auto}",
        "table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;",
        "padding:3px 8px;text-align:left;font-size:14px}th{background:#f2f2f2}",
        "td.n{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}",
        ".video{display:flex;gap:16px;align-items:flex-start;margin-bottom:24px}",
        ".video video{flex:none}.video img{flex:1 1 0;min-width:0;max-width:820px}",
        "</style></head><body>",
        f"<h1>{e(title)}</h1><h2>Summary</h2><table>",
        *(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in table),
        f"</table><h2>Training</h2><img alt='plots' src='{_data_url(run_dir / 'report.png')}'>",
    ]
    if videos:
        parts.append("<h2>Evaluation videos (learned agent)</h2>")
        for v in videos:
            plans = v.with_name(f"{v.stem}_plans.png")
            parts.append(f"<div class='video'><div><b>{e(v.stem)}</b><br>")
            poster = _data_url(video_frame(v), "jpeg")
            parts.append(f"<video controls loop muted width='320' poster='{poster}'")
            parts.append(f"src='videos/{e(v.name)}'>")
            parts.append(f"<a href='videos/{e(v.name)}'>{e(v.name)}</a></video></div>")
            if plans.exists():
                parts.append(f"<img alt='chosen plans' src='videos/{e(plans.name)}'>")
            parts.append("</div>")
    cols = [c for c in METRIC_COLUMNS if any(r.get(c) not in (None, "") for r in rows)]
    parts.append("<h2>Per-episode metrics</h2><div class='wide'><table><tr>")
    parts += [f"<th>{e(c)}</th>" for c in cols]
    for r in rows:
        parts.append(
            "</tr><tr>" + "".join(f"<td class='n'>{e(_cell(r.get(c)))}</td>" for c in cols)
        )
    parts.append("</tr></table></div><p>Every column: <code>metrics.csv</code>.</p></body></html>")
    return "\n".join(parts) + "\n"


def _data_url(image: Path | np.ndarray, kind: str = "png") -> str:
    """An image file, or frame [H, W, 3] as ``kind``, inlined as a data URL."""
    if isinstance(image, Path):
        data = image.read_bytes()
    else:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format=kind, quality=85)
        data = buf.getvalue()
    return f"data:image/{kind};base64,{base64.b64encode(data).decode()}"


def _cell(v: str | None) -> str:
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return v or ""
    return str(int(x)) if x.is_integer() and abs(x) < 1e9 else f"{x:.3g}"


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md``, ``report.html`` and ``report.png`` in ``run_dir``; returns the
    path of ``report.md``."""
    run_dir = Path(run_dir)
    rows = _read_metrics(run_dir)
    summary = (
        json.loads((run_dir / "summary.json").read_text())
        if (run_dir / "summary.json").exists()
        else {}
    )
    panels = _training_panels(rows)
    try:
        model_panels, models = _model_panels(run_dir)
    except (FileNotFoundError, ValueError) as err:
        text = f"models unavailable:\n{err}"
        model_panels, models = [partial(_empty, title="learned models", text=text)], {}
    _figure(panels + model_panels, run_dir / "report.png")
    videos = list_videos(run_dir)
    gif = _gif(run_dir, videos)
    title = f"mbrm run report: {summary.get('task', '?')} seed {summary.get('seed', '?')}"
    table = _summary_rows(summary, models)
    (run_dir / "report.html").write_text(_html(title, table, rows, run_dir, videos))
    path = run_dir / "report.md"
    path.write_text(_markdown(title, table, run_dir, videos, gif))
    return path
