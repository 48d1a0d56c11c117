"""Peak backend memory of BUILD MODEL on bytea images as the table grows 10x.

The images are incompressible JPEGs (noise, --image-size pixels square, about
60 KB each) stored as bytea, so that holding the query result in memory
would show: N rows are ~N * 60 KB. For N and 10N rows, each run uses a fresh
backend and reads its peak resident memory (VmHWM in /proc/<pid>/status; the
benchmark must run on the server's machine, as root or the postgres user):

- project: ``thanosql.build_model`` (rows stream through SPI cursors);
- baseline: the naive in-database trainer, a PL/Python DO block that fetches
  the whole result with ``plpy.execute`` and then trains the same model for
  the same epoch on it.

Growth = (peak at 10N - peak at N) / peak at N; medians over --repeats runs go
to bench/results/image_memory.json (target for the project: < 10 %).

    .venv/bin/python bench/image_memory.py [--rows 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from typing import Any

import common

OPTIONS = {"image_col": "image", "label_col": "label", "epochs": 1, "batch_size": 32, "input_size": 32,
           "pretrained": False, "overwrite": True}

# The baseline: what a straightforward PL/Python trainer does.
NAIVE = """
import io, torch, timm, numpy as np, torch.nn.functional as F
from PIL import Image
rows = plpy.execute("SELECT image, label FROM {table}")          # the whole result, in memory
labels = sorted({{r["label"] for r in rows}})
index = {{l: i for i, l in enumerate(labels)}}
torch.manual_seed(0)
net = timm.create_model("convnext_tiny", num_classes=len(labels)).to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
net.train()
for start in range(0, len(rows), 32):
    batch = rows[start:start + 32]
    x = np.stack([np.asarray(Image.open(io.BytesIO(r["image"])).convert("RGB").resize((32, 32)))
                  for r in batch])
    x = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    y = torch.tensor([index[r["label"]] for r in batch])
    loss = F.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
"""


def parse_args() -> argparse.Namespace:
    p = common.parser(__doc__, "image_memory")
    p.add_argument("--rows", type=int, default=200, help="N: the small table; the large one has 10 N")
    p.add_argument("--image-size", type=int, default=192)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args()


def make_table(conn: Any, table: str, n: int, size: int) -> int:
    """``n`` distinct noise JPEGs as bytea with labels 0..9; returns total bytes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"CREATE TABLE {table} (id integer, image bytea, label integer)")
    total = 0
    with conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
        for i in range(n):
            buf = io.BytesIO()
            noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(noise).save(buf, "JPEG", quality=90)
            total += buf.tell()
            copy.write_row((i, buf.getvalue(), i % 10))
    return total


def measure(dsn: str, side: str, table: str) -> dict[str, float]:
    """Memory (MiB) of a fresh backend running one side on ``table``, and seconds."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        pid = conn.info.backend_pid
        conn.execute("SELECT thanosql._load()")  # the virtualenv on sys.path, for both sides
        # Peak RssAnon, polled: VmHWM also counts the shared_buffers pages the backend touched,
        # which grow with the table read up to shared_buffers whatever the backend holds itself;
        # RssAnon is the backend's own memory.
        sampler = common.Sampler([pid], ["RssAnon"])
        sampler.start()
        start = time.perf_counter()
        if side == "project":
            common.build_model(conn, "bench_image_memory", "ConvNeXt_Tiny", OPTIONS,
                               f"SELECT image, label FROM {table}")
        else:
            conn.execute("DO LANGUAGE plpython3u $naive$" + NAIVE.format(table=table) + "$naive$")
        seconds = time.perf_counter() - start
        peak_anon = sampler.stop()[pid]["RssAnon"]
        st = common.proc_status(pid)
        return {"peak_mib": st["VmHWM"] / 1024, "peak_anon_mib": peak_anon / 1024,
                "shmem_mib": st["RssShmem"] / 1024, "seconds": seconds}


def main() -> int:
    args = parse_args()
    import psycopg

    info = common.cluster_status()
    sizes = {"N": args.rows, "10N": 10 * args.rows}
    tables = {k: f"bench_image_memory_{k.lower()}" for k in sizes}
    with psycopg.connect(info["server"], autocommit=True) as conn:
        data_bytes = {k: make_table(conn, tables[k], n, args.image_size) for k, n in sizes.items()}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        side: {k: [] for k in sizes} for side in ("project", "baseline")}
    for r in range(args.repeats):
        for side in ("project", "baseline"):
            for k in sizes:
                m = measure(info["server"], side, tables[k])
                runs[side][k].append(m)
                print(f"run {r + 1} {side:8s} {k:3s} ({sizes[k]} rows,"
                      f" {data_bytes[k] / 2**20:.0f} MiB of images):"
                      f" VmHWM {m['peak_mib']:.0f} MiB (shared buffers {m['shmem_mib']:.0f}),"
                      f" peak RssAnon {m['peak_anon_mib']:.0f} MiB, {m['seconds']:.1f} s", flush=True)
    with psycopg.connect(info["server"], autocommit=True) as conn:
        common.clean_up(conn, "bench_image_memory", *tables.values())
    summary: dict[str, Any] = {}
    for side in runs:
        summary[side] = {}
        for key in ("peak_mib", "peak_anon_mib", "shmem_mib"):
            small = common.median_of(runs[side]["N"], key)
            large = common.median_of(runs[side]["10N"], key)
            summary[side][key] = {"N": small, "10N": large, "growth": (large - small) / small}
    summary["data_mib"] = {k: v / 2**20 for k, v in data_bytes.items()}
    summary["target"] = "project growth < 0.10"
    common.save(args, "image_memory", runs, summary,
                run_settings={**common.settings(args), "build_options": OPTIONS})
    return 0


if __name__ == "__main__":
    sys.exit(main())
