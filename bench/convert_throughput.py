"""CONVERT throughput vs a psycopg client pipeline.

Both embed the same PNG files (scikit-learn digits under thanosql.data_dir)
with the same stored SimCLR model and batch size, and both end with the
embeddings in the ``emb vector(128)`` column of the same table:

- project: ``CONVERT USING m OPTIONS (image_col='path', result_col='emb',
  create_index=False) AS SELECT * FROM t``, rewritten by the preprocessor as
  the proxy would and sent straight to the server; the session has the model
  cached (one CONVERT first);
- baseline: a client that SELECTs (id, path), decodes the files with a
  ``DataLoader`` (worker processes, the same centre-crop + resize), runs the
  same weights (fetched from the catalog once, not timed), L2-normalizes, COPYs
  (id, vector) into a temporary table in binary and writes them back with one
  ``UPDATE t SET emb = tmp.v FROM tmp WHERE t.id = tmp.id``.

The table is VACUUMed before every run (both sides leave a dead tuple per row).
Runs alternate ``--repeats`` times; medians of rows/s and their ratio
(project / baseline; target >= 1.0) go to bench/results/convert_throughput.json.

    .venv/bin/python bench/convert_throughput.py [--rows 3594] [--batch-size 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import common

MODEL = "bench_convert"
TABLE = "bench_convert_images"


def parse_args() -> argparse.Namespace:
    p = common.parser(__doc__, "convert_throughput")
    p.add_argument("--rows", type=int, default=3594, help="images to embed (digits, repeated if > 1797)")
    p.add_argument("--backbone", default="resnet18")
    common.add_client_args(p, batch_size=256)
    return p.parse_args()


def simclr_net(options: dict[str, Any], _labels: Any) -> Any:
    import timm

    from thanosql_pg.algorithms.simclr.model import SimCLRNet

    backbone = timm.create_model(options["arch"], pretrained=False, num_classes=0)
    return SimCLRNet(backbone, int(options["embedding_dim"]))


class Client(common.ImageClient):
    """The baseline: everything a client program does around the same model."""

    def __init__(self, conn: Any, workers: int, batch_size: int) -> None:
        super().__init__(conn, MODEL, simclr_net, workers, batch_size)

    def run(self, conn: Any, table: str) -> int:
        import numpy as np
        import torch
        import torch.nn.functional as F
        from pgvector.psycopg import register_vector

        register_vector(conn)
        rows = conn.execute(f"SELECT id, path FROM {table}").fetchall()
        vectors: list[np.ndarray] = []
        with torch.inference_mode():
            for x in self.batches([r[1] for r in rows]):
                x = x.contiguous(memory_format=torch.channels_last)
                vectors.append(F.normalize(self.net(x), dim=1).numpy())
        emb = np.concatenate(vectors)
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE bench_convert_tmp (id integer, v vector(128)) ON COMMIT DROP")
            with conn.cursor().copy("COPY bench_convert_tmp (id, v) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "vector"])
                for (i, _path), v in zip(rows, emb, strict=True):
                    copy.write_row((i, v))
            conn.execute(f"UPDATE {table} AS t SET emb = tmp.v FROM bench_convert_tmp tmp"
                         " WHERE t.id = tmp.id")
        return len(rows)


def set_up(conn: Any, args: argparse.Namespace, files_dir: str) -> None:
    """The table of digits (a primary key for the baseline's UPDATE), and the model trained one
    epoch on 320 of them."""
    from thanosql_pg import datasets

    datasets.load_table(conn, TABLE, common.digit_rows(files_dir, args.rows))
    conn.execute(f"ALTER TABLE {TABLE} ADD PRIMARY KEY (id)")
    common.build_model(conn, MODEL, "SimCLR",
                       {"image_col": "path", "epochs": 1, "batch_size": 64, "backbone": args.backbone,
                        "input_size": args.input_size, "overwrite": True},
                       f"SELECT path FROM {TABLE} LIMIT 320")


def measure(conn: Any, args: argparse.Namespace) -> tuple[dict[str, list[float]], float]:
    """Rows/s of each side, alternating; and the least cosine similarity of the two sides'
    vectors for the same row (both must compute the same embeddings)."""
    import numpy as np

    from thanosql_pg.preprocessor import rewrite

    convert = rewrite(f"CONVERT USING {MODEL} OPTIONS (image_col='path', result_col='emb',"
                      f" batch_size={args.batch_size}, create_index=False) AS SELECT * FROM {TABLE}")
    conn.execute(convert)  # warm-up: the model is now cached in this session (and the column exists)
    client = Client(conn, args.workers, args.batch_size)
    sample = f"SELECT id, emb::text FROM {TABLE} WHERE id < 50"
    project_vectors: dict[int, str] = {}

    def project() -> float:
        conn.execute(f"VACUUM {TABLE}")  # both sides leave a dead tuple per row
        rate = common.per_second(lambda: conn.execute(convert).fetchone()[1])
        project_vectors.update(conn.execute(sample))
        return rate

    def baseline() -> float:
        conn.execute(f"VACUUM {TABLE}")
        return common.per_second(lambda: client.run(conn, TABLE))

    results = common.alternate(args.repeats, project, baseline, "rows/s")
    base_vectors = dict(conn.execute(sample))
    agree = min(float(np.dot(json.loads(project_vectors[i]), json.loads(base_vectors[i])))
                for i in project_vectors)
    return results, agree


def main() -> int:
    args = parse_args()
    import psycopg

    info = common.cluster_status()
    with psycopg.connect(info["server"], autocommit=True) as conn:
        set_up(conn, args, info["files_dir"])
        results, agree = measure(conn, args)
        common.clean_up(conn, MODEL, TABLE)
    summary = common.side_by_side(results, "rows_per_second", ">= 1.0", min_cosine_project_vs_baseline=agree)
    common.save(args, "convert_throughput", results, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
