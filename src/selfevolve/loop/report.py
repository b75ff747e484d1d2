"""The run report: one self-contained HTML file (no scripts, no network; plots are embedded PNGs).

It shows, per iteration, what each step acquired, kept and dropped (with reasons), the training loss curves,
every metric over the iterations, whether the update was accepted or rolled back, which iteration was shipped
and why, and the base model's answers to the fixed evaluation questions beside the shipped model's.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from pathlib import Path

from selfevolve.errors import SelfEvolveError
from selfevolve.io import write_text
from selfevolve.store import ExperienceStore, IterationRecord, StepRecord

MAX_ANSWER_ROWS = 60  # per evaluation task, so the page stays readable

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #176117; font-weight: 600; } .bad { color: #a11; font-weight: 600; }
.ship { background: #eef7ee; padding: 0.8em 1em; border-left: 4px solid #2a7a2a; }
img { max-width: 100%; } pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.85em; }
.changed { background: #fff6d6; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """An HTML table; cells are HTML already (escape text with :func:`_e`)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png(figure) -> str:
    """An <img> of a matplotlib figure as an embedded base64 PNG."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _metric_plot(iterations: list[IterationRecord], guards: list[dict]) -> str:
    """One panel per metric: its value after every iteration; rolled-back iterations as red crosses, the base
    value dashed, a guard's limit dotted red."""
    plt = _pyplot()
    metrics = sorted({m for r in iterations for m in r.result["scores"]})
    if not metrics:
        return "<p>No metric was scored.</p>"
    columns = min(3, len(metrics))
    rows = -(-len(metrics) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for axis, metric in zip(axes.flat, metrics):
        points = [
            (r.iteration, r.result["scores"][metric], r.accepted)
            for r in iterations
            if r.result["scores"].get(metric) is not None
        ]
        axis.plot([p[0] for p in points], [p[1] for p in points], color="#888", linewidth=1)
        accepted = [p for p in points if p[2]]
        rolled = [p for p in points if not p[2]]
        axis.plot([p[0] for p in accepted], [p[1] for p in accepted], "o", color="#2a7a2a", label="accepted")
        if rolled:
            axis.plot(
                [p[0] for p in rolled],
                [p[1] for p in rolled],
                "x",
                color="#c11",
                markersize=9,
                label="rolled back",
            )
        base = points[0][1]
        axis.axhline(base, linestyle="--", color="#999", linewidth=0.8)
        for guard in (g for g in guards if g["metric"] == metric):
            for bound, sign in ((guard.get("max_increase"), 1), (guard.get("max_decrease"), -1)):
                if bound is not None:
                    limit = base * (1 + sign * bound) if guard.get("relative", True) else base + sign * bound
                    axis.axhline(limit, linestyle=":", color="#c11", linewidth=1, label="guard limit")
        axis.set_title(metric, fontsize=10)
        axis.set_xlabel("iteration")
        axis.set_xticks([p[0] for p in points])
    for axis in list(axes.flat)[len(metrics) :]:
        axis.axis("off")
    for axis in list(axes.flat)[: len(metrics)]:
        axis.legend(fontsize=7)
    figure.tight_layout()
    return _png(figure)


def _loss_plot(steps: list[StepRecord]) -> str:
    """Training loss per optimizer step, one line per update step of every iteration."""
    curves = [(s.iteration, s.step, s.result["losses"]) for s in steps if s.result.get("losses")]
    if not curves:
        return "<p>No update step trained yet.</p>"
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 3.5))
    for iteration, step, losses in curves:
        axis.plot(range(1, len(losses) + 1), losses, label=f"iteration {iteration}: {step}")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("training loss")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return _png(figure)


def _verdict(record: IterationRecord) -> str:
    if not record.accepted:
        return '<span class="bad">rolled back</span>'
    if record.iteration == 0:
        return "base model"
    return '<span class="ok">accepted</span>' if record.result.get("updated") else "no update"


def _number(value: object) -> str:
    """A metric for a table: 4 significant digits; "n/a" for a value that was not finite."""
    return "n/a" if value is None else f"{value:.4g}" if isinstance(value, float | int) else str(value)


def _plain(value: object) -> str:
    """A summary value as text: a dict as ``key value, ...``."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def _step_rows(store: ExperienceStore, run_id: str, steps: list[StepRecord]) -> dict[int, list[list[str]]]:
    """Per iteration, one row per step: acquired, kept, dropped with reasons, metrics, seconds."""
    made = Counter((e.iteration, e.step) for e in store.query(run_id=run_id))
    decisions = store.decisions(run_id)
    rows: dict[int, list[list[str]]] = {}
    for record in steps:
        mine = [d for d in decisions if (d.iteration, d.step) == (record.iteration, record.step)]
        kept = sum(d.kept for d in mine)
        reasons = Counter(d.reason for d in mine if not d.kept)
        result = record.result
        notes = [f"{k} {_number(v)}" for k, v in result.get("metrics", {}).items()]
        notes += [f"{k}: {_plain(v)}" for k, v in result.get("summary", {}).items()]
        if result.get("losses"):
            notes.append(f"loss {result['losses'][0]:.4g} → {result['losses'][-1]:.4g}")
        rows.setdefault(record.iteration, []).append(
            [
                _e(record.phase),
                _e(record.step),
                str(made[(record.iteration, record.step)] or ""),
                str(kept if mine else ""),
                _e(", ".join(f"{reason}: {n}" for reason, n in reasons.most_common()))
                or ("0" if mine else ""),
                _e("; ".join(notes)),
                f"{result.get('seconds', 0):.1f}",
            ]
        )
    return rows


def _answers(store: ExperienceStore, run_id: str, shipped: int, label: str) -> str:
    """The base model's answers to every fixed evaluation question (those with gold answers) beside those of
    iteration ``shipped``."""
    evaluated = [
        e
        for e in store.query(run_id=run_id, phase="evaluate")
        if isinstance(e.feedback, dict) and "answers" in e.feedback
    ]
    tasks = sorted({e.task for e in evaluated})
    parts = []
    for task in tasks:
        before = {e.prompt: e for e in evaluated if e.task == task and e.iteration == 0}
        after = {e.prompt: e for e in evaluated if e.task == task and e.iteration == shipped}
        rows = []
        for question, old in list(before.items())[:MAX_ANSWER_ROWS]:
            new = after.get(question)
            if new is None:
                continue
            gold = " / ".join((old.feedback or {}).get("answers", []))
            mark = lambda e: f'<span class="{"ok" if e.score else "bad"}">{"✓" if e.score else "✗"}</span>'  # noqa: E731
            row = [
                _e(question),
                _e(gold),
                f"{mark(old)} {_e(old.response)}",
                f"{mark(new)} {_e(new.response)}",
            ]
            rows.append(row)
        parts.append(f"<h3>{_e(task)}</h3>" + _table(["question", "gold", "base (iteration 0)", label], rows))
    return "".join(parts)


def render_report(run_dir: str | Path) -> str:
    """The report of the run in ``run_dir`` as an HTML page."""
    run_dir = Path(run_dir)
    store_file, config_file = run_dir / "store.sqlite", run_dir / "config.yaml"
    if not store_file.is_file() or not config_file.is_file():
        raise SelfEvolveError(
            f"{run_dir} holds no loop run (no store.sqlite and config.yaml); pass a run directory"
        )
    with ExperienceStore(store_file) as store:
        runs = store.runs()
        if not runs:
            raise SelfEvolveError(f"{store_file} holds no run yet; start it with selfevolve evolve")
        run = runs[0]
        iterations = store.iterations(run.id)
        steps = store.step_records(run.id)
        step_rows = _step_rows(store, run.id, steps)
        shipped = iterations[-1].best_iteration if iterations else 0
        compared = shipped or (iterations[-1].iteration if iterations else 0)
        label = f"shipped (iteration {compared})" if shipped else f"iteration {compared} (not shipped)"
        answers = _answers(store, run.id, compared, label) if compared else ""
    config = run.config
    selection = config.get("selection_metric", "")
    parts = [
        f"<h1>selfevolve run: {_e(run_dir.name)}</h1>",
        f"<p>model <b>{_e(config.get('model'))}</b>, {len(iterations)} of {int(config.get('iterations', 0)) + 1} "
        f"iterations done (0 is the base model), status <b>{_e(run.status)}</b>, started {_e(run.created_at)}.</p>",
    ]
    if iterations:
        last, best = iterations[-1], iterations[shipped]
        why = (
            "no update beat the base model on " + _e(selection)
            if shipped == 0
            else f"the accepted model with the best {_e(selection)} ({best.result['scores'][selection]:.4g})"
        )
        stopped = " The run stopped early." if last.result.get("stopped") else ""
        parts.append(
            f'<div class="ship">Shipped as <code>model/</code>: <b>iteration {shipped}</b> '
            f"(<code>{_e(best.model_revision)}</code>): {why}.{stopped}</div>"
        )
        metrics = sorted({m for r in iterations for m in r.result["scores"]})
        rows = [
            [
                str(r.iteration) + (" ★" if r.iteration == shipped else ""),
                _verdict(r),
                _e(r.reason),
                *(_number(r.result["scores"].get(m, "")) for m in metrics),
            ]
            for r in iterations
        ]
        parts += [
            "<h2>Iterations</h2>",
            _table(["iteration", "update", "why", *metrics], rows, set(range(3, 3 + len(metrics)))),
            "<h2>Metrics over iterations</h2>",
            "<p>Dashed: the base model. Dotted red: a guard's limit. Crosses: updates the guards rolled back.</p>",
            _metric_plot(iterations, config.get("guards", [])),
        ]
    parts += ["<h2>Training loss</h2>", _loss_plot(steps), "<h2>Steps of each iteration</h2>"]
    for iteration, rows in sorted(step_rows.items()):
        parts.append(f"<h3>Iteration {iteration}</h3>")
        parts.append(
            _table(
                ["phase", "step", "acquired", "kept", "dropped (why)", "result", "seconds"], rows, {2, 3, 6}
            )
        )
    if answers:
        parts += ["<h2>Answers before and after</h2>", answers]
    parts += ["<h2>Config</h2>", f"<pre>{_e(config_file.read_text(encoding='utf-8'))}</pre>"]
    title = f"selfevolve run {run_dir.name}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (atomically) and return its path."""
    return write_text(Path(run_dir) / "report.html", render_report(run_dir))
