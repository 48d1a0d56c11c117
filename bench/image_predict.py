"""PREDICT throughput vs a psycopg client pipeline.

Both classify the same PNG files (scikit-learn digits under thanosql.data_dir)
with the same stored model (ConvNeXt_Tiny by default) and batch size, and both
end with the results in a table:

- project: ``PREDICT USING m OPTIONS (image_col='path', table_name='...')``,
  rewritten by the preprocessor exactly as the proxy would and sent straight
  to the server; the session has the model cached (one PREDICT first);
- baseline: a client that SELECTs the paths, decodes the files with a
  ``DataLoader`` (worker processes, the same centre-crop + resize), runs the
  same weights (fetched from the catalog once, not timed) and COPYs
  (id, label) back into a new table.

Runs alternate ``--repeats`` times; medians of rows/s and their ratio
(project / baseline; target >= 1.0) go to bench/results/image_predict.json.

    .venv/bin/python bench/image_predict.py [--rows 1797] [--batch-size 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import common

MODEL = "bench_image_predict"
TABLE = "bench_image_predict"
OUT_PROJECT, OUT_BASELINE = "bench_predict_project", "bench_predict_baseline"


def parse_args() -> argparse.Namespace:
    p = common.parser(__doc__, "image_predict")
    p.add_argument("--algorithm", default="ConvNeXt_Tiny")
    p.add_argument("--rows", type=int, default=1797, help="images to classify (digits, repeated if > 1797)")
    common.add_client_args(p, batch_size=64)
    return p.parse_args()


def classifier(options: dict[str, Any], labels: list[Any]) -> Any:
    import timm

    return timm.create_model(options["arch"], num_classes=len(labels))


class Client(common.ImageClient):
    """The baseline: everything a client program does around the same model."""

    def __init__(self, conn: Any, workers: int, batch_size: int) -> None:
        super().__init__(conn, MODEL, classifier, workers, batch_size)

    def run(self, conn: Any, table: str, out_table: str) -> int:
        import torch

        rows = conn.execute(f"SELECT id, path FROM {table}").fetchall()
        preds: list[str] = []
        with torch.inference_mode():
            for x in self.batches([r[1] for r in rows]):
                preds += [self.labels[k] for k in self.net(x).argmax(1).tolist()]
        conn.execute(f"DROP TABLE IF EXISTS {out_table}")
        conn.execute(f"CREATE TABLE {out_table} (id integer, path text, predict_result text)")
        with conn.cursor().copy(f"COPY {out_table} FROM STDIN") as copy:
            for (i, path), p in zip(rows, preds, strict=True):
                copy.write_row((i, path, p))
        return len(rows)


def set_up(conn: Any, args: argparse.Namespace, rows: common.Rows) -> None:
    """The table of digits, and the model trained one epoch on 320 of them."""
    from thanosql_pg import datasets

    datasets.load_table(conn, TABLE, rows)
    common.build_model(conn, MODEL, args.algorithm,
                       {"image_col": "path", "label_col": "label", "epochs": 1, "batch_size": 32,
                        "input_size": args.input_size, "pretrained": False, "overwrite": True},
                       f"SELECT path, label FROM {TABLE} LIMIT 320")


def measure(conn: Any, args: argparse.Namespace) -> tuple[dict[str, list[float]], int]:
    """Rows/s of each side, alternating; and how many rows both sides label alike."""
    from thanosql_pg.preprocessor import rewrite

    predict = rewrite(f"PREDICT USING {MODEL} OPTIONS (image_col='path', batch_size={args.batch_size},"
                      f" table_name='{OUT_PROJECT}') AS SELECT id, path FROM {TABLE}")
    conn.execute(predict)  # warm-up: the model is now cached in this session
    client = Client(conn, args.workers, args.batch_size)

    def project() -> float:
        return common.per_second(lambda: conn.execute(predict).fetchone()[1])

    def baseline() -> float:
        return common.per_second(lambda: client.run(conn, TABLE, OUT_BASELINE))

    results = common.alternate(args.repeats, project, baseline, "rows/s")
    same = conn.execute(f"SELECT count(*) FROM {OUT_PROJECT} p JOIN {OUT_BASELINE} b"
                        " USING (id) WHERE p.predict_result = b.predict_result").fetchone()[0]
    return results, same


def main() -> int:
    args = parse_args()
    import psycopg

    info = common.cluster_status()
    with psycopg.connect(info["server"], autocommit=True) as conn:
        set_up(conn, args, common.digit_rows(info["files_dir"], args.rows))
        results, same = measure(conn, args)
        common.clean_up(conn, MODEL, OUT_PROJECT, OUT_BASELINE, TABLE)
    # agreement: both sides give the same labels
    summary = common.side_by_side(results, "rows_per_second", ">= 1.0", agreement=same / args.rows)
    common.save(args, "image_predict", results, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
