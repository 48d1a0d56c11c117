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
MODEL = "bench_image_predict"


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
    p.add_argument("--algorithm", default="ConvNeXt_Tiny")
    p.add_argument("--rows", type=int, default=1797, help="images to classify (digits, repeated if > 1797)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="baseline DataLoader workers")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "image_predict.json")
    return p.parse_args()


class Client:
    """The baseline: everything a client program does around the same model."""

    def __init__(self, conn: Any, workers: int, batch_size: int) -> None:
        import timm
        import torch
        from safetensors.torch import load

        rec = conn.execute("SELECT id, options, labels FROM thanosql.models WHERE name = %s",
                           [MODEL]).fetchone()
        payload = b"".join(bytes(r[0]) for r in conn.execute(
            "SELECT data FROM thanosql.model_chunks WHERE model_id = %s ORDER BY seq", [rec[0]]))
        self.options, self.labels = rec[1], rec[2]
        torch.set_num_threads(os.cpu_count() or 1)
        self.net = timm.create_model(self.options["arch"], num_classes=len(self.labels))
        self.net.load_state_dict(load(payload))
        self.net = self.net.to(memory_format=torch.channels_last).eval()
        self.workers, self.batch_size = workers, batch_size

    def run(self, conn: Any, table: str, out_table: str) -> int:
        import numpy as np
        import torch
        from PIL import Image
        from torch.utils.data import DataLoader, Dataset

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
        preds: list[str] = []
        with torch.inference_mode():
            for x in loader:
                x = (x.permute(0, 3, 1, 2).float() / 255 - mean) / std
                preds += [self.labels[k] for k in self.net(x).argmax(1).tolist()]
        conn.execute(f"DROP TABLE IF EXISTS {out_table}")
        conn.execute(f"CREATE TABLE {out_table} (id integer, path text, predict_result text)")
        with conn.cursor().copy(f"COPY {out_table} FROM STDIN") as copy:
            for (i, path), p in zip(rows, preds, strict=True):
                copy.write_row((i, path, p))
        return len(rows)


def main() -> int:
    args = parse_args()
    import psycopg

    from thanosql_pg import datasets
    from thanosql_pg.preprocessor import rewrite

    info = cluster_status()
    rows = datasets.write_digits(Path(info["files_dir"]) / "digits")
    rows = [{**rows[i % len(rows)], "id": i} for i in range(args.rows)]
    predict = rewrite(f"PREDICT USING {MODEL} OPTIONS (image_col='path', batch_size={args.batch_size},"
                      " table_name='bench_predict_project') AS SELECT id, path FROM bench_image_predict")
    results: dict[str, list[float]] = {"project": [], "baseline": []}
    with psycopg.connect(info["server"], autocommit=True) as conn:
        datasets.load_table(conn, "bench_image_predict", rows)
        conn.execute("SELECT * FROM thanosql.build_model(%s, %s, %s, %s)", [
            MODEL, args.algorithm,
            json.dumps({"image_col": "path", "label_col": "label", "epochs": 1, "batch_size": 32,
                        "input_size": args.input_size, "pretrained": False, "overwrite": True}),
            "SELECT path, label FROM bench_image_predict LIMIT 320"]).fetchall()
        conn.execute(predict)  # warm-up: the model is now cached in this session
        client = Client(conn, args.workers, args.batch_size)
        for r in range(args.repeats):
            start = time.perf_counter()
            n = conn.execute(predict).fetchone()[1]
            project = n / (time.perf_counter() - start)
            start = time.perf_counter()
            n = client.run(conn, "bench_image_predict", "bench_predict_baseline")
            baseline = n / (time.perf_counter() - start)
            results["project"].append(project)
            results["baseline"].append(baseline)
            print(f"run {r + 1}: project {project:.1f} rows/s, baseline {baseline:.1f} rows/s", flush=True)
        same = conn.execute("SELECT count(*) FROM bench_predict_project p JOIN bench_predict_baseline b"
                            " USING (id) WHERE p.predict_result = b.predict_result").fetchone()[0]
        for t in ("bench_predict_project", "bench_predict_baseline", "bench_image_predict"):
            conn.execute(f"DROP TABLE {t}")
        conn.execute("SELECT thanosql.delete_model(%s)", [MODEL])
    summary = {
        "project_rows_per_second": statistics.median(results["project"]),
        "baseline_rows_per_second": statistics.median(results["baseline"]),
        "agreement": same / args.rows,  # both sides give the same labels
    }
    summary["ratio"] = summary["project_rows_per_second"] / summary["baseline_rows_per_second"]
    summary["target"] = ">= 1.0"
    report = {
        "benchmark": "image_predict",
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
