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
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODEL = "bench_convert"
TABLE = "bench_convert_images"


def cluster_status() -> dict[str, Any]:
    exe = Path(sys.executable).parent / "thanosql"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "thanosql_pg.cli"]
    out = subprocess.run([*cmd, "status", "--json"], capture_output=True, text=True, cwd=ROOT, check=False)
    info = json.loads(out.stdout or "{}")
    if not info.get("server_running"):
        sys.exit("the embedded cluster is not running: .venv/bin/thanosql start")
    return info


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=3594, help="images to embed (digits, repeated if > 1797)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="baseline DataLoader workers")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "convert_throughput.json")
    return p.parse_args()


class Client:
    """The baseline: everything a client program does around the same model."""

    def __init__(self, conn: Any, workers: int, batch_size: int) -> None:
        import timm
        import torch
        from safetensors.torch import load

        from thanosql_pg.algorithms.simclr import SimCLRNet

        rec = conn.execute("SELECT id, options FROM thanosql.models WHERE name = %s", [MODEL]).fetchone()
        payload = b"".join(bytes(r[0]) for r in conn.execute(
            "SELECT data FROM thanosql.model_chunks WHERE model_id = %s ORDER BY seq", [rec[0]]))
        self.options = rec[1]
        torch.set_num_threads(os.cpu_count() or 1)
        backbone = timm.create_model(self.options["arch"], pretrained=False, num_classes=0)
        self.net = SimCLRNet(backbone, int(self.options["embedding_dim"]))
        self.net.load_state_dict(load(payload))
        self.net = self.net.to(memory_format=torch.channels_last).eval()
        self.workers, self.batch_size = workers, batch_size

    def run(self, conn: Any, table: str) -> int:
        import numpy as np
        import torch
        import torch.nn.functional as F
        from pgvector.psycopg import register_vector
        from PIL import Image
        from torch.utils.data import DataLoader, Dataset

        register_vector(conn)
        size = int(self.options["input_size"])
        mean = torch.tensor(self.options["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(self.options["std"]).view(1, 3, 1, 1)
        rows = conn.execute(f"SELECT id, path FROM {table}").fetchall()

        class Files(Dataset):
            def __len__(self) -> int:
                return len(rows)

            def __getitem__(self, i: int) -> Any:
                with Image.open(rows[i][1]) as img:
                    img = img.convert("RGB")
                    w, h = img.size
                    s = min(w, h)
                    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
                    return torch.from_numpy(np.array(img.resize((size, size), Image.BILINEAR, box=box)))

        loader = DataLoader(Files(), batch_size=self.batch_size, num_workers=self.workers)
        vectors: list[np.ndarray] = []
        with torch.inference_mode():
            for x in loader:
                x = (x.permute(0, 3, 1, 2).float() / 255 - mean) / std
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


def main() -> int:
    args = parse_args()
    import numpy as np
    import psycopg

    from thanosql_pg import datasets
    from thanosql_pg.preprocessor import rewrite

    info = cluster_status()
    rows = datasets.write_digits(Path(info["files_dir"]) / "digits")
    rows = [{**rows[i % len(rows)], "id": i} for i in range(args.rows)]
    convert = rewrite(f"CONVERT USING {MODEL} OPTIONS (image_col='path', result_col='emb',"
                      f" batch_size={args.batch_size}, create_index=False) AS SELECT * FROM {TABLE}")
    results: dict[str, list[float]] = {"project": [], "baseline": []}
    with psycopg.connect(info["server"], autocommit=True) as conn:
        datasets.load_table(conn, TABLE, rows)
        conn.execute(f"ALTER TABLE {TABLE} ADD PRIMARY KEY (id)")
        conn.execute("SELECT * FROM thanosql.build_model(%s, 'SimCLR', %s, %s)", [
            MODEL, json.dumps({"image_col": "path", "epochs": 1, "batch_size": 64, "backbone": args.backbone,
                               "input_size": args.input_size, "overwrite": True}),
            f"SELECT path FROM {TABLE} LIMIT 320"]).fetchall()
        conn.execute(convert)  # warm-up: the model is now cached in this session (and the column exists)
        client = Client(conn, args.workers, args.batch_size)
        for r in range(args.repeats):
            conn.execute(f"VACUUM {TABLE}")
            start = time.perf_counter()
            n = conn.execute(convert).fetchone()[1]
            project = n / (time.perf_counter() - start)
            project_vectors = dict(conn.execute(f"SELECT id, emb::text FROM {TABLE} WHERE id < 50"))
            conn.execute(f"VACUUM {TABLE}")
            start = time.perf_counter()
            n = client.run(conn, TABLE)
            baseline = n / (time.perf_counter() - start)
            results["project"].append(project)
            results["baseline"].append(baseline)
            print(f"run {r + 1}: project {project:.1f} rows/s, baseline {baseline:.1f} rows/s", flush=True)
        # both sides compute the same embeddings (cosine similarity of the two vectors per row)
        base_vectors = dict(conn.execute(f"SELECT id, emb::text FROM {TABLE} WHERE id < 50"))
        agree = min(float(np.dot(json.loads(project_vectors[i]), json.loads(base_vectors[i])))
                    for i in project_vectors)
        conn.execute(f"DROP TABLE {TABLE}")
        conn.execute("SELECT thanosql.delete_model(%s)", [MODEL])
    summary = {
        "project_rows_per_second": statistics.median(results["project"]),
        "baseline_rows_per_second": statistics.median(results["baseline"]),
        "min_cosine_project_vs_baseline": agree,
    }
    summary["ratio"] = summary["project_rows_per_second"] / summary["baseline_rows_per_second"]
    summary["target"] = ">= 1.0"
    report = {
        "benchmark": "convert_throughput",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "runs": results,
        "median": summary,
    }
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
