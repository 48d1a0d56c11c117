"""Tiny networks the tests train in seconds, written as the server reads local weights."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_convnext(folder: Path, num_classes: int = 10) -> str:
    """A timm model folder (config.json + model.safetensors) of test_convnext (0.2 M
    parameters) with random weights (seed 0): base_model for a fast ConvNeXt_Tiny BUILD.
    Readable by the server's OS user."""
    import timm
    import torch
    from safetensors.torch import save_file

    folder.mkdir()
    torch.manual_seed(0)
    net = timm.create_model("test_convnext", pretrained=False, num_classes=num_classes)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "architecture": "test_convnext", "num_classes": num_classes,
        "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    for p in (folder, *folder.iterdir()):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)  # the server runs as another OS user
    return str(folder)


@contextmanager
def convnext_folder(files: Path, prefix: str) -> Iterator[str]:
    """``write_convnext`` for 10 classes under ``files``, removed at exit."""
    folder = files / f"{prefix}_test_convnext"
    try:
        yield write_convnext(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
