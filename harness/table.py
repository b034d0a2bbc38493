"""The results table printed after a run and written beside it as Markdown."""

from __future__ import annotations

from harness.entries import Entry


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def rows(entries: list[Entry]) -> tuple[list[str], list[list[str]]]:
    metric = entries[0].results.test_metric.name if entries else "metric"
    header = ["arm", "poison", "defence", "seed", f"{metric} final", f"{metric} best",
              "#LP", "UD", "ΔUD"]
    body = []
    order = sorted(entries, key=lambda e: (e.seed, e.defence.name != "none", e.defence.label or "",
                                          e.poison is not None, e.arm_id))
    for e in order:
        r = e.results
        body.append([
            e.arm_id, e.poison.label if e.poison else "clean", e.defence.label or e.defence.name, str(e.seed),
            _fmt(r.test_metric.final, 4), _fmt(r.test_metric.best, 4), _fmt(r.lp, 2), _fmt(r.ud),
            _fmt(r.ud_change) if r.ud_change is not None else "",
        ])
    return header, body


def markdown(entries: list[Entry]) -> str:
    header, body = rows(entries)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    beta = entries[0].results.beta if entries else None
    if beta is not None:
        lines += ["", f"β (learnable threshold, from the clean arm) = {beta:.6g}"]
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
