"""Digits test data shared by the image tests (classification now, SimCLR later).

scikit-learn's 1,797 real 8x8 handwritten digits, written as PNG files that
the server's OS user can read (via thanosql_pg.datasets) and loaded into
tables of (id integer, path text, image bytea, label integer).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from thanosql_pg import datasets

Rows = list[dict[str, Any]]
_cache: dict[str, Rows] = {}


def digits(files_dir: str | Path) -> Rows:
    """All digits as rows {id, path, image (PNG bytes), label}; PNGs under files_dir/digits8."""
    d = Path(files_dir) / "digits8"
    key = str(d)
    if key not in _cache:
        # 8x8 as scikit-learn has them: the model's own resize does the upscaling
        _cache[key] = datasets.write_digits(d, scale=1)
        for p in (Path(files_dir), d):  # the server runs as another OS user
            os.chmod(p, os.stat(p).st_mode | 0o755)
    return _cache[key]


def split(rows: Rows, test_every: int = 5) -> tuple[Rows, Rows]:
    """Deterministic train/test split: every ``test_every``-th id is held out."""
    return datasets.split(rows, test_every)


def per_class(rows: Rows, n: int) -> Rows:
    """The first ``n`` rows of each label: small balanced sets for fast tests."""
    seen: dict[int, int] = defaultdict(int)
    out = []
    for r in rows:
        if seen[r["label"]] < n:
            seen[r["label"]] += 1
            out.append(r)
    return out


def load_table(conn: Any, table: str, rows: Rows) -> str:
    """(Re)create ``table`` (id, path, image bytea, label) holding ``rows``; returns its name."""
    datasets.load_table(conn, table, rows)
    return table


def tables(conn: Any, files_dir: str | Path, prefix: str, *, train_per_class: int | None = None,
           test_per_class: int | None = None) -> tuple[str, str]:
    """Train and test tables ``<prefix>_train`` / ``<prefix>_test``, optionally shrunk per class."""
    train, test = split(digits(files_dir))
    if train_per_class is not None:
        train = per_class(train, train_per_class)
    if test_per_class is not None:
        test = per_class(test, test_per_class)
    return load_table(conn, f"{prefix}_train", train), load_table(conn, f"{prefix}_test", test)
