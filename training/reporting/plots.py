"""The report's charts: matplotlib on its Agg backend, written as PNG files into the site's `plots/` folder.

Labels come from the data (segment names, offer titles): mathtext is off, so a `$` in a title is drawn as it
is instead of being parsed as a formula (which fails on unbalanced dollars), and long labels are shortened.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

BLUE = "#2b6cb0"
GREY = "#a0aec0"
ORANGE = "#dd6b20"
DPI = 100
LABEL_CHARS = 48


def short(label: str, limit: int = LABEL_CHARS) -> str:
    """A label cut to `limit` characters (with an ellipsis), on one line."""
    flat = " ".join(str(label).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@contextmanager
def plotting() -> Iterator[None]:
    """Matplotlib on Agg, without mathtext, for the block."""
    import matplotlib

    matplotlib.use("Agg")
    with matplotlib.rc_context({"text.parse_math": False, "font.size": 10, "axes.spines.top": False}):
        yield


def save(figure: Figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return path


def draw(path: Path, width: float, height: float, paint: Callable[[Axes], None]) -> Path:
    """One chart: `paint` draws on a fresh axis of `width` × `height` inches, saved at `path`."""
    with plotting():
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(width, height))
        paint(axis)
        return save(figure, path)


def probability_bars(
    path: Path, labels: Sequence[str], values: Sequence[float], xlabel: str, reference: float | None = None
) -> Path:
    """Horizontal bars of probabilities (as percentages), the first label on top; an optional dashed line at
    `reference` (e.g. everyone's mean)."""

    def paint(axis: Axes) -> None:
        shown = [short(label) for label in labels][::-1]
        heights = [100 * v for v in values][::-1]
        bars = axis.barh(range(len(shown)), heights, color=BLUE)
        axis.set_yticks(range(len(shown)), shown)
        axis.bar_label(bars, labels=[f"{h:.1f}%" for h in heights], padding=3, fontsize=9)
        if reference is not None:
            axis.axvline(100 * reference, color=ORANGE, linestyle="--", linewidth=1, label="all customers")
            axis.legend(loc="lower right", fontsize=8)
        axis.set_xlabel(xlabel)
        axis.set_xlim(0, max([*heights, 100 * (reference or 0)], default=1) * 1.2 or 1)

    return draw(path, 7.5, 0.38 * len(labels) + 1.2, paint)


def hours_chart(path: Path, sendwise: np.ndarray, logged: np.ndarray | None) -> Path:
    """Shares by local hour (0-23): sendwise's recipients beside the sends the data shows."""

    def paint(axis: Axes) -> None:
        hours = np.arange(24)
        width = 0.42 if logged is not None else 0.8
        if logged is not None:
            axis.bar(hours - width / 2, 100 * logged, width, color=GREY, label="sent in the data (share of sends)")
            axis.bar(hours + width / 2, 100 * sendwise, width, color=BLUE, label="sendwise (share of recipients)")
        else:
            axis.bar(hours, 100 * sendwise, width, color=BLUE, label="sendwise (share of recipients)")
        axis.set_xticks(hours, [f"{h:02d}" for h in hours], fontsize=8)
        axis.set_xlabel("local hour of the recipient (their own clock)")
        axis.set_ylabel("share (%)")
        axis.legend(loc="upper left", fontsize=9)

    return draw(path, 9, 3.8, paint)


def value_bars(path: Path, labels: Sequence[str], values: Sequence[float], xlabel: str) -> Path:
    """Horizontal bars of shares (as percentages) of the labels, the first on top."""

    def paint(axis: Axes) -> None:
        shown = [short(label) for label in labels][::-1]
        heights = [100 * v for v in values][::-1]
        bars = axis.barh(range(len(shown)), heights, color=BLUE)
        axis.set_yticks(range(len(shown)), shown)
        axis.bar_label(bars, labels=[f"{h:.1f}%" for h in heights], padding=3, fontsize=9)
        axis.set_xlabel(xlabel)
        axis.set_xlim(0, max(heights, default=1) * 1.2 or 1)

    return draw(path, 7.5, 0.38 * len(labels) + 1.2, paint)
