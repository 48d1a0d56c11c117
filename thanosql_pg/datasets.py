"""Real data without downloads, for the demo, tutorials and tests.

scikit-learn ships 1,797 real 8x8 handwritten digits (UCI); they are written
out as PNG files and loaded into tables of (path, label) or (image bytea, label).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DIGITS_COLUMNS = "id integer, path text, image bytea, label integer"


def write_digits(directory: str | Path, *, scale: int = 4) -> list[dict[str, Any]]:
    """Write every digit as a grayscale PNG (upscaled ``scale`` times) under
    ``directory``; return rows with id, path, PNG bytes and label. Files that
    already exist are kept, so a second call is fast."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)  # the server runs as another OS user
    digits = load_digits()
    rows = []
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        path = directory / f"{i:04d}_{label}.png"
        if not path.exists():
            pixels = (img * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").resize((8 * scale, 8 * scale), Image.NEAREST).save(path)
        rows.append({"id": i, "path": str(path), "image": path.read_bytes(), "label": int(label)})
    return rows


Rows = list[dict[str, Any]]


def split(rows: Rows, test_every: int = 5) -> tuple[Rows, Rows]:
    """A deterministic train/test split: every ``test_every``-th row is held out."""
    train = [r for r in rows if r["id"] % test_every]
    test = [r for r in rows if not r["id"] % test_every]
    return train, test


def load_table(conn: Any, table: str, rows: list[dict[str, Any]]) -> None:
    """(Re)create ``table`` with DIGITS_COLUMNS and COPY ``rows`` into it (psycopg 3)."""
    from psycopg import sql

    ident = sql.Identifier(table)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
    conn.execute(sql.SQL("CREATE TABLE {} (" + DIGITS_COLUMNS + ")").format(ident))
    with conn.cursor().copy(sql.SQL("COPY {} (id, path, image, label) FROM STDIN").format(ident)) as copy:
        for r in rows:
            copy.write_row((r["id"], r["path"], r["image"], r["label"]))
