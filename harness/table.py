"""The results table printed after a run and written beside it as Markdown."""

from __future__ import annotations

from harness.entries import Entry


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def rows(entries: list[Entry]) -> tuple[list[str], list[list[str]]]:
    """One row per entry; multi-task runs (several metrics) get a task column and named metrics."""
    metrics = {e.results.test_metric.name for e in entries}
    per_task = any(e.task_label is not None for e in entries)
    metric = next(iter(metrics)) if len(metrics) == 1 else "metric"
    header = [
        "arm",
        *(["task"] if per_task else []),
        "poison",
        "defence",
        "seed",
        f"{metric} final",
        f"{metric} best",
        "#LP",
        "UD",
        "ΔUD",
    ]
    body = []
    tasks = [e.task_label for e in entries]
    order = sorted(
        entries,
        key=lambda e: (
            e.seed,
            e.defence.name != "none",
            e.defence.label or "",
            e.poison is not None,
            e.arm_id,
            tasks.index(e.task_label),
        ),
    )
    for e in order:
        r = e.results
        name = "" if len(metrics) == 1 else f"{r.test_metric.name} "
        poison = e.poison.label if e.poison else "clean"
        if e.crafting_task is not None and e.crafting_task != e.evaluated_task:
            poison += f" (crafted on {e.crafting_task})"
        body.append(
            [
                e.arm_id,
                *([e.task_label or ""] if per_task else []),
                poison,
                e.defence.label or e.defence.name,
                str(e.seed),
                name + _fmt(r.test_metric.final, 4),
                name + _fmt(r.test_metric.best, 4),
                _fmt(r.lp, 2),
                _fmt(r.ud),
                _fmt(r.ud_change) if r.ud_change is not None else "",
            ]
        )
    return header, body


def markdown(entries: list[Entry]) -> str:
    header, body = rows(entries)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    betas = {e.task_label: e.results.beta for e in entries}
    if len(betas) == 1:
        lines += [
            "",
            f"β (learnable threshold, from the clean arm) = {next(iter(betas.values())):.6g}",
        ]
    elif betas:
        lines += [
            "",
            "β (learnable threshold, from the clean arm's SAL of each task): "
            + ", ".join(f"{task} {beta:.6g}" for task, beta in betas.items()),
        ]
    return "\n".join(lines) + "\n"


def print_table(entries: list[Entry], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    header, body = rows(entries)
    table = Table(title=title)
    for name in header:
        table.add_column(name, justify="left" if name in ("arm", "poison", "defence") else "right")
    for row in body:
        table.add_row(*row)
    Console(width=max(120, Console().width)).print(table)
