"""What the benchmarks share: finding the cluster, arguments, the machine
record, timing, medians, reading a backend's memory, fetching a stored model
for a client-side baseline, and writing bench/results/<name>.json.

A benchmark runs as ``.venv/bin/python bench/<name>.py``, so this folder is on
``sys.path`` and ``import common`` finds this module; importing it also puts the
checkout's root on ``sys.path`` so that ``thanosql_pg`` is this checkout's.
Heavy packages (torch, psycopg) are imported inside the functions that need
them: ``rewrite_latency.py`` needs neither.
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
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

T = TypeVar("T")
Rows = list[dict[str, Any]]


# --- the cluster and the command line -------------------------------------------------------------
def cluster_status() -> dict[str, Any]:
    """``thanosql status --json`` of the embedded cluster; exits when its server is not running."""
    exe = Path(sys.executable).parent / "thanosql"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "thanosql_pg.cli"]
    out = subprocess.run([*cmd, "status", "--json"], capture_output=True, text=True, cwd=ROOT, check=False)
    info = json.loads(out.stdout or "{}")
    if not info.get("server_running"):
        sys.exit("the embedded cluster is not running: .venv/bin/thanosql start")
    return info


def thanosql(home: Path | None, *args: str) -> str:
    """The thanosql CLI on the cluster under ``home`` (None: the embedded cluster's own)."""
    env = dict(os.environ)
    if home is not None:
        env["THANOSQL_HOME"] = str(home)
    out = subprocess.run([sys.executable, "-m", "thanosql_pg.cli", *args], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=False)
    if out.returncode not in (0, 3):
        sys.exit(f"thanosql {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def add_preload_args(p: argparse.ArgumentParser) -> None:
    """A second embedded cluster, started with --preload, measured side by side."""
    p.add_argument("--preload-home", type=Path, default=ROOT / ".thanosql" / "bench-preload",
                   help="THANOSQL_HOME of the second cluster, started with --preload")
    p.add_argument("--no-preload-cluster", dest="preload_cluster", action="store_false",
                   help="measure the embedded cluster only")


def start_preload_cluster(home: Path) -> dict[str, Any]:
    """``thanosql start --preload`` under ``home``; its ``status --json``."""
    thanosql(home, "start", "--preload")
    return json.loads(thanosql(home, "status", "--json"))


def stop_cluster(home: Path) -> None:
    thanosql(home, "stop")


def parser(doc: str | None, name: str) -> argparse.ArgumentParser:
    """An argument parser whose help is the script's docstring, with ``--out``
    defaulting to bench/results/<name>.json."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=RESULTS / f"{name}.json", help="where the JSON goes")
    return p


def settings(args: argparse.Namespace, *, skip: Iterable[str] = ("out",)) -> dict[str, Any]:
    """The arguments as recorded in a report: everything but where the report goes."""
    skipped = set(skip)
    return {k: v for k, v in vars(args).items() if k not in skipped}


# --- the record of a run --------------------------------------------------------------------------
def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def machine(**extra: Any) -> dict[str, Any]:
    """What ran the benchmark; ``extra`` adds keys (the device, the load, the commit)."""
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            **extra}


def run_context() -> dict[str, Any]:
    """The load average and the checkout's commit. Taken when a run starts: the
    load then is other people's work, which the figures should be read against."""
    def git(*cmd: str) -> str:
        # no optional locks: status would otherwise refresh the index under others' feet
        out = subprocess.run(["git", "--no-optional-locks", *cmd], capture_output=True, text=True, cwd=ROOT,
                             check=False)
        return out.stdout.strip()

    return {"load_average": [round(x, 2) for x in os.getloadavg()],
            "git_commit": git("rev-parse", "HEAD") or None,
            # other edits in the working tree mean the commit alone does not say what ran
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def report(name: str, machine_info: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """The report's head (benchmark, when, machine) followed by ``sections`` in order."""
    return {"benchmark": name, "when": now(), "machine": machine_info, **sections}


def write_report(out: Path, data: dict[str, Any], summary: Any = None) -> None:
    """Writes ``data`` as JSON to ``out`` and prints ``summary`` (when given) and where it went."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    if summary is not None:
        print(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


def save(args: argparse.Namespace, name: str, runs: Any, summary: dict[str, Any], *,
         run_settings: dict[str, Any] | None = None, machine_info: dict[str, Any] | None = None) -> None:
    """The usual report (settings, every run, the medians as ``median``) written to ``args.out``;
    ``run_settings`` defaults to the arguments, ``machine_info`` to ``machine()``."""
    data = report(name, machine_info or machine(),
                  settings=settings(args) if run_settings is None else run_settings,
                  runs=runs, median=summary)
    write_report(args.out, data, summary)


def clean_up(conn: Any, model: str | None, *tables: str) -> None:
    """Deletes the benchmark's model and drops its tables."""
    if model:
        conn.execute("SELECT thanosql.delete_model(%s, true)", [model])
    for table in tables:
        conn.execute(f"DROP TABLE IF EXISTS {table}")


# --- timing and medians ---------------------------------------------------------------------------
def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()``'s result and its wall-clock seconds."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def alternate(repeats: int, project: Callable[[], float], baseline: Callable[[], float], unit: str,
              precision: int = 1) -> dict[str, list[float]]:
    """Runs project then baseline ``repeats`` times, so that whatever else the
    machine does falls on both alike; returns each side's figures."""
    results: dict[str, list[float]] = {"project": [], "baseline": []}
    for r in range(repeats):
        p = project()
        b = baseline()
        results["project"].append(p)
        results["baseline"].append(b)
        print(f"run {r + 1}: project {p:.{precision}f} {unit}, baseline {b:.{precision}f} {unit}", flush=True)
    return results


def per_second(fn: Callable[[], float]) -> float:
    """Runs ``fn``, which returns how many items it did, and returns items per second."""
    n, seconds = timed(fn)
    return n / seconds


def side_by_side(results: dict[str, list[float]], metric: str, target: str, **extra: Any) -> dict[str, Any]:
    """Medians of both sides as ``project_<metric>``/``baseline_<metric>``, ``extra``,
    then their ratio (project / baseline) and the target."""
    project = statistics.median(results["project"])
    baseline = statistics.median(results["baseline"])
    return {f"project_{metric}": project, f"baseline_{metric}": baseline, **extra,
            "ratio": project / baseline, "target": target}


def median_of(runs: Iterable[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0-100)."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def latency(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p99 and mean in milliseconds of per-statement wall times."""
    ms = [v * 1000 for v in seconds]
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(percentile(ms, 99), 3),
            "mean_ms": round(statistics.fmean(ms), 3), "n": len(ms)}


# --- a backend's memory and threads ---------------------------------------------------------------
# /proc/<pid>/status of a backend: readable when the benchmark runs on the server's machine as root
# or as the server's OS user. Memory values are KiB; Threads is a count.
STATUS_KEYS = ("VmHWM", "VmRSS", "RssAnon", "RssShmem", "RssFile", "Threads")


# /proc/<pid>/smaps_rollup: the proportional set size shares each page among the processes that map
# it, so a sum over backends counts shared pages (libraries, a memory-mapped weight file) once; the
# sum of VmRSS counts them in every backend.
PSS_KEYS = ("Pss", "Pss_Anon", "Pss_File", "Pss_Shmem")


def proc_status(pid: int, keys: Iterable[str] = STATUS_KEYS, file: str = "status") -> dict[str, int]:
    """``keys`` of /proc/<pid>/<file> (``status`` or ``smaps_rollup``), as integers."""
    wanted = set(keys)
    out = {}
    for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            out[key] = int(value.split()[0])
    return out


def backend_memory(pid: int) -> dict[str, int]:
    """A process's resident memory (KiB): VmRSS and its parts, the PSS figures, and Threads."""
    return {**proc_status(pid, ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads")),
            **proc_status(pid, PSS_KEYS, "smaps_rollup")}


def server_pss(data_dir: str | Path) -> int:
    """The whole server's memory (KiB): the PSS of the postmaster and every process it
    started (backends, background workers), so each page counts once however many of
    them share it. A sum over the backends alone undercounts a lone backend: the pages
    it shares with the postmaster are split with the idle background processes too."""
    postmaster = int((Path(data_dir) / "postmaster.pid").read_text().split()[0])
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    total = 0
    for pid in [postmaster, *map(int, children)]:
        try:
            total += proc_status(pid, ("Pss",), "smaps_rollup")["Pss"]
        except (OSError, KeyError):
            pass  # a process that ended meanwhile
    return total


class Sampler(threading.Thread):
    """Polls /proc/<pid>/status of some processes and keeps the peak of each key
    per process: the end-of-run value misses what a statement held while it ran."""

    def __init__(self, pids: Iterable[int], keys: Sequence[str], interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.keys, self.interval, self.done = tuple(keys), interval, threading.Event()
        self.peaks: dict[int, dict[str, int]] = {pid: dict.fromkeys(self.keys, 0) for pid in pids}

    def run(self) -> None:
        while not self.done.wait(self.interval):
            for pid, peak in self.peaks.items():
                try:
                    now_ = proc_status(pid, self.keys)
                except OSError:
                    continue  # the process is gone: its peak stays what it was
                for k, v in now_.items():
                    peak[k] = max(peak[k], v)

    def stop(self) -> dict[int, dict[str, int]]:
        self.done.set()
        self.join()
        return self.peaks


# --- data and models ------------------------------------------------------------------------------
def digit_rows(files_dir: str | Path, n: int) -> Rows:
    """``n`` rows of scikit-learn's digits as 32x32 PNGs under ``files_dir``/digits (readable by
    the server), cycling through the 1,797 and numbered 0..n-1 when more are asked for."""
    from thanosql_pg import datasets

    rows = datasets.write_digits(Path(files_dir) / "digits")
    return [{**rows[i % len(rows)], "id": i} for i in range(n)]


def add_training_args(p: argparse.ArgumentParser, *, rows: int, epochs: int, input_size: int = 32,
                      repeats: int = 3, batch_size: int = 32) -> None:
    """The options of a benchmark that BUILDs ConvNeXt_Tiny from scratch on digits."""
    p.add_argument("--rows", type=int, default=rows)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--input-size", type=int, default=input_size)
    p.add_argument("--repeats", type=int, default=repeats)


def digits_training(args: argparse.Namespace, table: str) -> tuple[str, dict[str, Any]]:
    """(the server's DSN, BUILD's options) for ``add_training_args``'s benchmark, after
    loading ``args.rows`` digits into ``table`` (id, path, label)."""
    import psycopg

    from thanosql_pg import datasets

    info = cluster_status()
    rows = digit_rows(info["files_dir"], args.rows)
    with psycopg.connect(info["server"], autocommit=True) as conn:
        datasets.load_table(conn, table, rows)
    return info["server"], {"image_col": "path", "label_col": "label", "epochs": args.epochs,
                            "batch_size": args.batch_size, "input_size": args.input_size,
                            "learning_rate": 2e-3, "pretrained": False, "overwrite": True}


def build_model(conn: Any, name: str, algorithm: str, options: dict[str, Any], query: str) -> list[tuple]:
    """``thanosql.build_model`` called directly (set-up is not what a benchmark times)."""
    return conn.execute("SELECT * FROM thanosql.build_model(%s, %s, %s, %s)",
                        [name, algorithm, json.dumps(options), query]).fetchall()


def fetch_model(conn: Any, name: str) -> tuple[dict[str, Any], bytes]:
    """A stored model's catalog row (id, options, labels) and the safetensors payload of its
    current version, as a client program would fetch it to run the same weights itself."""
    model_id, version, options, labels = conn.execute(
        "SELECT id, version, options, labels FROM thanosql.models WHERE name = %s", [name]).fetchone()
    payload = b"".join(bytes(r[0]) for r in conn.execute(
        "SELECT data FROM thanosql.model_chunks WHERE model_id = %s AND version = %s ORDER BY seq",
        [model_id, version]))
    return {"id": model_id, "options": options, "labels": labels}, payload


def server_settings(conn: Any) -> dict[str, str]:
    """The thanosql.* settings of the session: figures depend on them (threads, device)."""
    return dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name LIKE 'thanosql.%'"
                             " ORDER BY name").fetchall())


# --- the client-side image baselines --------------------------------------------------------------
def add_client_args(p: argparse.ArgumentParser, batch_size: int) -> None:
    """The options of a side-by-side image benchmark with a client-program baseline."""
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="baseline DataLoader workers")


class ImageClient:
    """A client program's side of an image benchmark: the stored model's weights, fetched
    once from the catalog (not timed) into the network ``make_net(options, labels)`` builds,
    run with every core in channels_last, on batches decoded by DataLoader workers."""

    def __init__(self, conn: Any, model: str, make_net: Callable[[dict[str, Any], Any], Any],
                 workers: int, batch_size: int) -> None:
        import torch
        from safetensors.torch import load

        rec, payload = fetch_model(conn, model)
        self.options, self.labels = rec["options"], rec["labels"]
        torch.set_num_threads(os.cpu_count() or 1)
        net = make_net(self.options, self.labels)
        net.load_state_dict(load(payload))
        self.net = net.to(memory_format=torch.channels_last).eval()
        self.workers, self.batch_size = workers, batch_size

    def batches(self, paths: Sequence[str]) -> Iterator[Any]:
        return image_batches(paths, self.options, self.batch_size, self.workers)


def image_batches(paths: Sequence[str], options: dict[str, Any], batch_size: int,
                  workers: int) -> Iterator[Any]:
    """Normalized NCHW float batches of image files, decoded by ``DataLoader`` worker
    processes with the project's preprocessing: a centre crop to a square, a bilinear
    resize to the model's ``input_size``, the model's mean and std."""
    import numpy as np
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    size = int(options["input_size"])
    mean = torch.tensor(options["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(options["std"]).view(1, 3, 1, 1)

    class Files(Dataset):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int) -> Any:
            with Image.open(paths[i]) as img:
                img = img.convert("RGB")
                w, h = img.size
                s = min(w, h)
                box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
                return torch.from_numpy(np.array(img.resize((size, size), Image.BILINEAR, box=box)))

    for x in DataLoader(Files(), batch_size=batch_size, num_workers=workers):
        yield (x.permute(0, 3, 1, 2).float() / 255 - mean) / std


# --- the digits classifier of the serving benchmarks ----------------------------------------------
DIGITS_CLASSIFIER = {"image_col": "path", "label_col": "label", "epochs": 1, "batch_size": 32,
                     "input_size": 32, "pretrained": False, "overwrite": True}


def digits_classifier(conn: Any, files_dir: str | Path, model: str, table: str, train_rows: int) -> Rows:
    """A ConvNeXt_Tiny trained one epoch on the first ``train_rows`` training digits (32x32 PNGs,
    the demo's split), and ``table`` holding the 360 held-out digits; returns those rows."""
    from thanosql_pg import datasets

    train, test = datasets.split(datasets.write_digits(Path(files_dir) / "digits"))
    datasets.load_table(conn, f"{table}_train", train[:train_rows])
    datasets.load_table(conn, table, test)
    build_model(conn, model, "ConvNeXt_Tiny", DIGITS_CLASSIFIER, f"SELECT path, label FROM {table}_train")
    conn.execute(f"DROP TABLE {table}_train")
    return test
