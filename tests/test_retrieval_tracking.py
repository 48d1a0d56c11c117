"""Retrieval tracked during training (issue 21): with validation_split, the embedding
families (SimCLR, CLIP) score each epoch by how well the held-out rows rank, record it in
thanosql.training_info, and early stopping keeps the epoch that ranked best.

- SimCLR with label_col: precision@10 among the held-out images (as EVALUATE top_k=10).
- SimCLR without labels: how often a random view of a held-out image finds that image.
- CLIP: how often a held-out image's nearest caption is its own.

Real PostgreSQL, the real extension, scikit-learn's digits (tests/digits.py).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import digits
import psycopg
import pytest
from expect import fails

from thanosql_pg import datasets

PREFIX = "rt_" + uuid.uuid4().hex[:6]
Conn = psycopg.Connection


def name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


@pytest.fixture(scope="module")
def train(conn: Conn, files: Path) -> str:
    """600 training digits (60 per class) with a caption each."""
    rows = digits.per_class(digits.split(digits.digits(files))[0], 60)
    table = digits.load_table(conn, name("train"), rows)
    conn.execute(f"ALTER TABLE {table} ADD COLUMN caption text")
    conn.execute(f"UPDATE {table} t SET caption = v.c FROM unnest(%s::int[], %s::text[]) AS v(id, c)"
                 " WHERE t.id = v.id", [[r["id"] for r in rows], datasets.caption_digits(rows)])
    return table


def epochs_of(db: Conn, model: str) -> list[dict[str, Any]]:
    cur = db.execute("SELECT * FROM thanosql.training_info(%s) ORDER BY epoch", [model])
    cols = [c.name for c in cur.description or ()]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def build(px: Conn, model: str, algorithm: str, options: str, query: str) -> dict[str, Any]:
    row = px.execute(f"BUILD MODEL {model} USING {algorithm} OPTIONS ({options}) AS {query}").fetchone()
    assert row is not None
    metrics: dict[str, Any] = row[5]
    return metrics


def test_simclr_precision_at_10_per_epoch_and_best_kept(px: Conn, train: str) -> None:
    """label_col: each epoch's validation metric is precision@10 among the held-out
    images; early stopping keeps the best one, and BUILD's result says which."""
    model = name("labelled")
    metrics = build(px, model, "SimCLR", "image_col='path', label_col='label', input_size=16, epochs=4,"
                    " validation_split=0.2, early_stopping=True, patience=4",
                    f"SELECT path, label FROM {train}")
    rows = epochs_of(px, model)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert {r["metric"] for r in rows} == {"precision_at_10"}
    scores = [r["validation_metric"] for r in rows]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert all(r["train_metric"] is None and r["validation_loss"] is not None for r in rows)
    best = max(range(4), key=lambda i: (scores[i], -i)) + 1  # the first of the best
    assert metrics["best_epoch"] == metrics["kept_epoch"] == best
    assert metrics["validation_precision_at_10"] == pytest.approx(scores[best - 1], abs=1e-6)
    assert "train_precision_at_10" not in metrics
    # 10 classes: chance is 0.1; four short epochs already rank well above it
    assert scores[best - 1] >= 0.3, scores


def test_simclr_view_precision_without_labels(px: Conn, train: str) -> None:
    """No label_col: the epochs are scored by how often a random view of a held-out
    image has that image's plain view as its nearest (chance: 1 in 120)."""
    model = name("views")
    metrics = build(px, model, "SimCLR", "image_col='path', input_size=16, epochs=2, validation_split=0.2",
                    f"SELECT path FROM {train}")
    rows = epochs_of(px, model)
    assert {r["metric"] for r in rows} == {"view_precision_at_1"}
    assert all(0.0 <= r["validation_metric"] <= 1.0 for r in rows)
    assert rows[-1]["validation_metric"] > 3 / 120, rows
    assert metrics["validation_view_precision_at_1"] == pytest.approx(rows[-1]["validation_metric"], abs=1e-6)


def test_simclr_label_col_needs_validation(px: Conn, train: str) -> None:
    """label_col only scores the held-out part: without validation_split it would be read
    for nothing, so BUILD says so; a label_col that is not a column is named."""
    fails(lambda: px.execute(f"BUILD MODEL {name('nolabels')} USING SimCLR OPTIONS (image_col='path',"
                             f" label_col='label', epochs=1) AS SELECT path, label FROM {train}"),
          "22023", "validation_split")
    fails(lambda: px.execute(f"BUILD MODEL {name('nocol')} USING SimCLR OPTIONS (image_col='path',"
                             f" label_col='digit', epochs=1, validation_split=0.2) AS SELECT path, label"
                             f" FROM {train}"), "42703", "digit")


def test_clip_text_precision_per_epoch(px: Conn, train: str) -> None:
    """CLIP: each epoch's validation metric is how often a held-out image's nearest caption
    (among the held-out ones) is its own."""
    model = name("clip")
    metrics = build(px, model, "CLIP", "image_col='path', text_col='caption', pretrained=False, epochs=2,"
                    " validation_split=0.2", f"SELECT path, caption FROM {train}")
    rows = epochs_of(px, model)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {r["metric"] for r in rows} == {"text_precision_at_1"}
    assert all(0.0 <= r["validation_metric"] <= 1.0 and r["train_metric"] is None for r in rows)
    assert metrics["validation_text_precision_at_1"] == pytest.approx(rows[-1]["validation_metric"], abs=1e-6)
