"""Pictures of results, for the notebook: a training curve (thanosql.training_info's
rows) and a confusion-matrix heatmap (EVALUATE ... report='confusion_matrix').

PNG bytes out, matplotlib's non-interactive backend: nothing here needs a
display or a database, so the magic shows them inline and tests can check them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from thanosql_pg import shapes
from thanosql_pg.algorithms import registry

# Columns of the results these pictures are drawn from.
TRAINING_INFO_COLUMNS = shapes.names(shapes.TRAINING_INFO)
CONFUSION_COLUMNS = shapes.names(registry.REPORTS["confusion_matrix"].columns)


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _numbers(rows: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [float("nan") if r.get(key) is None else float(r[key]) for r in rows]


def _has(values: list[float]) -> bool:
    return any(not math.isnan(v) for v in values)


def training_curve(rows: Sequence[dict[str, Any]], title: str = "") -> bytes:
    """Loss and metric per epoch, train and validation, of one BUILD/FIT."""
    fig = _figure(9, 3.4)
    epochs = [int(r["epoch"]) for r in rows]
    metric = next((r["metric"] for r in rows if r.get("metric")), "metric")
    for i, (kind, label) in enumerate((("loss", "loss"), ("metric", metric))):
        ax = fig.add_subplot(1, 2, i + 1)
        for split, style in (("train", "-o"), ("validation", "-s")):
            values = _numbers(rows, f"{split}_{kind}")
            if _has(values):
                ax.plot(epochs, values, style, label=split, markersize=3)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _png(fig)


def confusion_heatmap(rows: Sequence[dict[str, Any]], title: str = "") -> bytes:
    """Counts of (actual, predicted) pairs as a labelled heatmap."""
    labels = sorted({str(r["actual"]) for r in rows} | {str(r["predicted"]) for r in rows}, key=_label_key)
    index = {label: i for i, label in enumerate(labels)}
    grid = [[0] * len(labels) for _ in labels]
    for r in rows:
        grid[index[str(r["actual"])]][index[str(r["predicted"])]] += int(r["count"])
    side = max(3.0, 0.45 * len(labels) + 1.5)
    fig = _figure(side + 1, side)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(grid, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90 if len(labels) > 10 else 0)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    if len(labels) <= 20:
        top = max((max(row) for row in grid), default=0)
        for i, row in enumerate(grid):
            for j, n in enumerate(row):
                if n:
                    ax.text(j, i, str(n), ha="center", va="center", fontsize=8,
                            color="white" if n > top / 2 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if title:
        ax.set_title(title)
    return _png(fig)


def _label_key(label: str) -> tuple[int, float, str]:
    """Numbers in numeric order, then text."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)
