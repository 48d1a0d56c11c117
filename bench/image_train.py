"""BUILD MODEL throughput vs a plain PyTorch/timm training script.

Both train the same timm model (ConvNeXt_Tiny by default) from scratch on the
same PNG files (scikit-learn digits written under thanosql.data_dir), with the
same input size, batch size, epochs, optimizer (AdamW), augmentation (a
random-resized crop of 70-100 % of the area) and channels_last layout:

- project: ``SELECT * FROM thanosql.build_model(...)`` in a warmed-up backend
  (torch already imported), timed by the client: query materialization, SPI
  cursors, decoding in the backend's thread pool, training, storing the
  weights in the catalog;
- baseline: this file re-run with ``--baseline-run`` in a fresh process: a
  torch ``Dataset`` of the same paths, ``DataLoader`` with worker processes,
  the training loop, and serializing the weights. Imports are not timed.

Runs alternate (project, baseline, project, ...) ``--repeats`` times; medians
of images/s (end to end, and training loop only) and their ratio
(project / baseline; target >= 0.9) go to bench/results/image_train.json.

    .venv/bin/python bench/image_train.py [--rows 960] [--epochs 1] [--batch-size 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common

ALGOS = {"ConvNeXt_Tiny": "convnext_tiny", "ConvNeXt_Base": "convnext_base",
         "EfficientNetV2S": "tf_efficientnetv2_s", "EfficientNetV2M": "tf_efficientnetv2_m"}


def parse_args() -> argparse.Namespace:
    p = common.parser(__doc__, "image_train")
    p.add_argument("--algorithm", default="ConvNeXt_Tiny", choices=sorted(ALGOS))
    p.add_argument("--rows", type=int, default=960, help="training images (digits, repeated if > 1797)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="baseline DataLoader workers")
    p.add_argument("--baseline-run", type=Path, help=argparse.SUPPRESS)  # internal: one baseline run
    return p.parse_args()


# --- baseline: a plain training script ------------------------------------------------------------
def baseline_run(args: argparse.Namespace) -> None:
    import timm
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from safetensors.torch import save
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    spec = json.loads(args.baseline_run.read_text())
    paths, labels = spec["paths"], spec["labels"]
    classes = sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    size = args.input_size
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    tf = transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(3 / 4, 4 / 3)),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])

    class Files(Dataset):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int) -> tuple[Any, int]:
            with Image.open(paths[i]) as img:
                return tf(img.convert("RGB")), index[labels[i]]

    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    torch.manual_seed(0)
    model = timm.create_model(ALGOS[args.algorithm], pretrained=False, num_classes=len(classes))
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = args.epochs * math.ceil(len(paths) / args.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    loader = DataLoader(Files(), batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        persistent_workers=args.workers > 0)
    train_start = time.perf_counter()
    model.train()
    for _ in range(args.epochs):
        for x, y in loader:
            x = x.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    train_end = time.perf_counter()
    payload = save({k: v.contiguous() for k, v in model.state_dict().items()})
    end = time.perf_counter()
    print(json.dumps({"seconds": end - start, "train_seconds": train_end - train_start,
                      "payload_bytes": len(payload)}))


# --- the benchmark ------------------------------------------------------------------------------
def main() -> int:
    args = parse_args()
    if args.baseline_run:
        baseline_run(args)
        return 0
    import psycopg

    from thanosql_pg import datasets

    info = common.cluster_status()
    # 32x32 PNGs, readable by the server
    rows = common.digit_rows(info["files_dir"], args.rows)
    spec_file = common.RESULTS / ".image_train_rows.json"
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(json.dumps({"paths": [r["path"] for r in rows],
                                     "labels": [str(r["label"]) for r in rows]}))
    opts = {"image_col": "path", "label_col": "label", "epochs": args.epochs, "batch_size": args.batch_size,
            "input_size": args.input_size, "learning_rate": 2e-3, "pretrained": False, "overwrite": True}
    n_images = args.rows * args.epochs
    results: dict[str, list[dict[str, float]]] = {"project": [], "baseline": []}
    with psycopg.connect(info["server"], autocommit=True) as conn:
        datasets.load_table(conn, "bench_image_train", rows)
        # warm-up: imports torch/timm in this backend, as a long-lived session would have
        common.build_model(conn, "bench_image_train", args.algorithm, {**opts, "epochs": 1},
                           "SELECT path, label FROM bench_image_train LIMIT 64")
        for r in range(args.repeats):
            row, seconds = common.timed(lambda: conn.execute(
                "SELECT metrics FROM thanosql.build_model('bench_image_train', %s, %s,"
                " 'SELECT path, label FROM bench_image_train')",
                [args.algorithm, json.dumps(opts)]).fetchone())
            project = {"seconds": seconds, "images_per_second": n_images / seconds,
                       "train_images_per_second": row[0]["images_per_second"]}
            results["project"].append(project)
            out = subprocess.run([sys.executable, __file__, "--baseline-run", str(spec_file),
                                  "--algorithm", args.algorithm, "--epochs", str(args.epochs),
                                  "--batch-size", str(args.batch_size), "--input-size", str(args.input_size),
                                  "--workers", str(args.workers)],
                                 capture_output=True, text=True, check=True)
            b = json.loads(out.stdout.strip().splitlines()[-1])
            baseline = {"seconds": b["seconds"], "images_per_second": n_images / b["seconds"],
                        "train_images_per_second": n_images / b["train_seconds"]}
            results["baseline"].append(baseline)
            print(f"run {r + 1}: project {project['images_per_second']:.1f} img/s end to end"
                  f" ({project['train_images_per_second']:.1f} training), baseline"
                  f" {baseline['images_per_second']:.1f} ({baseline['train_images_per_second']:.1f})",
                  flush=True)
        common.clean_up(conn, "bench_image_train", "bench_image_train")
    spec_file.unlink()

    def median(side: str, key: str) -> float:
        return common.median_of(results[side], key)

    summary = {
        "project_images_per_second": median("project", "images_per_second"),
        "baseline_images_per_second": median("baseline", "images_per_second"),
        "project_train_images_per_second": median("project", "train_images_per_second"),
        "baseline_train_images_per_second": median("baseline", "train_images_per_second"),
    }
    summary["ratio"] = summary["project_images_per_second"] / summary["baseline_images_per_second"]
    summary["train_loop_ratio"] = (summary["project_train_images_per_second"]
                                   / summary["baseline_train_images_per_second"])
    summary["target"] = ">= 0.9"
    common.save(args, "image_train", results, summary,
                run_settings=common.settings(args, skip=("out", "baseline_run")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
