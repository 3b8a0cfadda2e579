"""Terminal UI: a live table of candidates, the current thought and a progress bar for the
training in flight (from MCP progress notifications). ``QuietView`` shows nothing."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from .state import Candidate

__all__ = ["LiveView", "QuietView"]


class QuietView:
    """No output (``--quiet`` / ``--json``)."""

    def session(self, session_id: str, info: dict[str, Any]) -> None:
        """Nothing to show."""

    def thought(self, step: int, text: str) -> None:
        """Nothing to show."""

    def candidates(self, rows: list[Candidate]) -> None:
        """Nothing to show."""

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        """Nothing to show."""

    def training(self, label: str, total: int) -> None:
        """Nothing to show."""

    def message(self, text: str) -> None:
        """Nothing to show."""

    def __enter__(self) -> QuietView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _loss(value: float | None) -> str:
    return f"{value:.4g}" if value is not None else "-"


class LiveView(QuietView):
    """A rich ``Live`` display on stderr (stdout stays free for ``--json``)."""

    def __init__(self, console: Console | None = None, title: str = "leads-agent") -> None:
        self.console = console or Console(stderr=True)
        self.title = title
        self.rows: list[Candidate] = []
        self.current_thought = ""
        self.step = 0
        self.header = ""
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} epochs"),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.task: TaskID | None = None
        self.live = Live(self._render(), console=self.console, refresh_per_second=4)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self._render())
        self.live.__exit__(None, None, None)

    def _table(self) -> Table:
        table = Table(title=self.header or self.title, expand=True)
        for column in (
            "step",
            "operation",
            "reaction",
            "diffusion",
            "params",
            "val loss",
            "status",
        ):
            table.add_column(
                column, justify="right" if column in ("params", "val loss") else "left"
            )
        best = min((c for c in self.rows if c.ok), key=lambda c: c.val_loss or 0, default=None)
        for c in self.rows:
            style = "bold green" if best is not None and c is best else None
            status_style = {"ok": "green", "unstable": "yellow", "failed": "red"}.get(c.status)
            table.add_row(
                str(c.step or "-"),
                c.operation + (" *" if c.edited else ""),
                c.reaction,
                c.diffusion,
                str(c.parameter_count if c.parameter_count is not None else "-"),
                _loss(c.val_loss),
                f"[{status_style}]{c.status}[/]" if status_style else c.status,
                style=style,
            )
        return table

    def _render(self) -> Group:
        thought = Panel(self.current_thought or "...", title=f"thought (step {self.step})")
        return Group(self._table(), thought, self.bar)

    def _refresh(self) -> None:
        self.live.update(self._render())

    def session(self, session_id: str, info: dict[str, Any]) -> None:
        """Title the table with the session."""
        dataset = info.get("dataset")
        name = dataset.get("name") if isinstance(dataset, dict) else dataset
        self.header = f"{self.title}: session {session_id} ({name or 'dataset'})"
        self._refresh()

    def thought(self, step: int, text: str) -> None:
        """Show the step's reasoning."""
        self.step, self.current_thought = step, text
        self._refresh()

    def candidates(self, rows: list[Candidate]) -> None:
        """Replace the table rows."""
        self.rows = list(rows)
        self._refresh()

    def training(self, label: str, total: int) -> None:
        """A new progress bar for a training run."""
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(f"training ({label})", total=max(total, 1), note="")
        self._refresh()

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        """MCP progress notification of the training in flight."""
        if self.task is None:
            self.training("", int(total or 1))
        assert self.task is not None
        if total:
            self.bar.update(self.task, total=total)
        self.bar.update(self.task, completed=progress, note=(message or "")[:60])

    def message(self, text: str) -> None:
        """Print a line above the live display."""
        self.console.log(text, markup=False, highlight=False)
