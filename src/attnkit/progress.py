"""The one progress bar of attnkit (training, evaluation, embedding a file, benchmarks).

``progress_bar(label, total)`` is a context manager that yields a :class:`Bar`; ``rich`` is
imported only when the bar is shown, so ``enabled=False`` (``Trainer.fit`` with
``progress=False``, ``embed(progress=False)``) works without it::

    with progress_bar("train", total=steps, fields={"loss": "-"}) as bar:
        for step in range(steps):
            ...
            bar.update(advance=1, loss=f"{loss:.3f}")

``fields`` are extra columns shown as ``name value`` after the bar; ``rate`` adds a
per-second column of the ``completed`` count (e.g. ``lines/s``) and ``eta`` the time left.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = ["Bar", "progress_bar"]


class Bar:
    """Handle of one progress bar: :meth:`update` moves it and sets its fields. A disabled
    bar (``progress is None``) does nothing."""

    def __init__(self, progress: Any = None, task: Any = None) -> None:
        self._progress, self._task = progress, task

    @property
    def enabled(self) -> bool:
        return self._progress is not None

    def update(self, *, advance: float = 0, completed: float | None = None, total: float | None = None,
               **fields: Any) -> None:
        """Advance by ``advance`` (or jump to ``completed``), optionally change ``total``, and
        set the named field columns."""
        if self._progress is None:
            return
        kwargs: dict[str, Any] = {"advance": advance} if completed is None else {"completed": completed}
        if total is not None:
            kwargs["total"] = total
        self._progress.update(self._task, **kwargs, **fields)


@contextmanager
def progress_bar(
    label: str,
    total: float | None,
    *,
    enabled: bool = True,
    completed: float = 0,
    fields: Mapping[str, str] | None = None,
    rate: str | None = None,
    eta: bool = False,
    transient: bool = False,
) -> Iterator[Bar]:
    """A rich progress bar ``label  [bar]  completed/total  field value ...  elapsed``.

    ``fields`` name the extra columns and their first values; ``rate`` (a unit such as
    ``"lines"``) adds ``N lines/s``; ``eta`` adds the estimated time left; ``transient``
    removes the bar when done. ``enabled=False`` yields a bar that does nothing and never
    imports rich.
    """
    if not enabled:
        yield Bar()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    fields = dict(fields or {})
    columns: list[Any] = [TextColumn(f"[bold]{label}[/bold]"), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn(f"{name} {{task.fields[{name}]}}") for name in fields]
    if rate:
        columns.append(TextColumn("{task.fields[_rate]}"))
        fields["_rate"] = "-"
    columns.append(TimeElapsedColumn())
    if eta:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, transient=transient) as progress:
        task = progress.add_task(label, total=total, completed=completed, **fields)
        yield _RateBar(progress, task, rate) if rate else Bar(progress, task)


class _RateBar(Bar):
    """A bar whose ``_rate`` column shows rich's speed estimate of ``completed`` per second."""

    def __init__(self, progress: Any, task: Any, unit: str) -> None:
        super().__init__(progress, task)
        self._unit = unit

    def update(self, **kwargs: Any) -> None:
        super().update(**kwargs)
        speed = self._progress.tasks[self._task].speed  # None until rich has two samples
        super().update(_rate="-" if speed is None else f"{speed:,.0f} {self._unit}/s")
