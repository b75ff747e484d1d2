"""``selfevolve judge-consistency``: how logically consistent a pairwise judge is (transitivity, commutativity,
negation invariance) and how often it agrees with gold."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def _print_table(report) -> None:
    from rich.console import Console
    from rich.table import Table

    config = report.config
    table = Table(title=f"judge consistency: {report.judge} ({report.n_sets} sets, {report.n_items} items)")
    for column in ("metric", "value", f"{config.confidence:.0%} interval", "units", "invalid", "calls"):
        table.add_column(column, justify="right")
    labels = {"s_tran": f"s_tran({config.k})", "s_comm": "s_comm", "s_neg": "s_neg", "gold_agreement": "gold"}
    for name, label in labels.items():
        metric = report.metrics.get(name)
        if metric is None:
            table.add_row(label, "absent", "-", "-", "-", "-")
            continue
        interval = "-" if metric.low is None else f"[{metric.low:.3f}, {metric.high:.3f}]"
        value = "-" if metric.value is None else f"{metric.value:.3f}"
        table.add_row(label, value, interval, str(metric.n), str(metric.n_invalid), str(metric.calls))
    console = Console()
    console.print(table)
    console.print(
        f"judge calls: {report.calls} ({report.invalid} invalid verdicts), {report.seconds:.1f} s; "
        f"ties (|p - 0.5| <= {config.tie_margin}): "
        + ("-" if report.tie_rate is None else f"{report.tie_rate:.0%} of the pairs")
    )
    for note in report.notes:
        Console(file=sys.stderr).print(f"note: {note}")


def main(
    items: str = typer.Argument(
        ...,
        help="JSONL, one item set per line: question, items (list of texts), optional gold and id; or "
        "numbers:COUNT:SEED (generated 'which number is larger' sets with gold).",
    ),
    judge: str = typer.Option(
        ...,
        "--judge",
        "-j",
        help="Registry name or model folder, an http(s):// OpenAI-compatible URL, or module:function "
        "(question, a, b, *, negated) -> P(a better).",
    ),
    kind: str = typer.Option(
        "logprob", "--kind", help="logprob (label probabilities) or verdict (written A/B)."
    ),
    k: int = typer.Option(
        5, "--k", help="Items per subset for s_tran(K); sets with fewer items are skipped."
    ),
    json_out: Path = typer.Option(None, "--json", help="Write the metrics with their intervals here."),
    cache: Path = typer.Option(
        None, "--cache", help="JSONL of every verdict, appended as asked and reused on a rerun (resume)."
    ),
    model: str = typer.Option(None, "--model", help="With an http(s) judge: the served model's name."),
    api_key: str = typer.Option(
        "EMPTY", "--api-key", envvar="OPENAI_API_KEY", help="Key for an http(s) judge."
    ),
    overrides: list[str] = typer.Option(
        None, "--set", help="ConsistencyConfig override key=value, e.g. tie_margin=0.05 or subsets=100."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
) -> None:
    """Measure a pairwise judge's s_tran(K), s_comm, s_neg and gold agreement on item sets; print a table."""
    from selfevolve.cli._common import quiet_libraries

    quiet_libraries()
    from selfevolve.config import load_config
    from selfevolve.evaluate.consistency import ConsistencyConfig, judge_consistency

    config = load_config(ConsistencyConfig, None, [f"k={k}", *(overrides or ())])
    report = judge_consistency(
        items,
        judge,
        config,
        kind=kind,
        model=model,
        api_key=api_key,
        device=device,
        cache=cache,
        json_out=json_out,
    )
    _print_table(report)
