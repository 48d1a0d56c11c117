"""Finding pretrained weights without surprises: local copies first, the hub
only when it answers.

Shared by every family that starts from published weights (timm models for
image classification, transformers checkpoints for speech recognition). The
order is always the same: the weights directories ($THANOSQL_WEIGHTS_DIR, the
thanosql.weights_dir setting, <thanosql.data_dir>/weights; RowSource.weights_dirs),
then the server's Hugging Face cache, then the hub, and only after a fast
connectivity probe: the hub clients retry for about a minute when offline, and
nothing can cancel them meanwhile. Pure Python: no torch import.

What a ``base_model`` (or a SimCLR backbone) names is decided by ``locate``:
only strictly spelled names are looked up by name (the weights directories are
read locations for such lookups only), and everything else is a path on the
server, checked like any input file.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlparse

from thanosql_pg.errors import FileError, InsufficientPrivilege

CHECKPOINT_EXTENSIONS = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
HF_DEFAULT_ENDPOINT = "https://huggingface.co"


def hub_endpoint() -> str:
    """The Hugging Face endpoint the hub clients will use (HF_ENDPOINT or the default)."""
    return os.environ.get("HF_ENDPOINT", HF_DEFAULT_ENDPOINT)


def hub_reachable(url: str, timeout: float = 3.0) -> bool:
    """A fast connectivity probe (TCP connect to the URL's host); False when
    HF_HUB_OFFLINE is set."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        return False
    try:
        with socket.create_connection((host, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def hf_cached(repo: str, filenames: Sequence[str]) -> str | None:
    """The first of ``filenames`` of Hugging Face repo ``repo`` that is in the local cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for fn in filenames:
        hit = try_to_load_from_cache(repo, fn)
        if isinstance(hit, str) and os.path.isfile(hit):
            return hit
    return None


def weights_in_dir(d: Path) -> Path | None:
    """The weights file of a model folder: a well-known name first, else the
    first file with a checkpoint extension."""
    for fn in WEIGHT_FILES:
        if (d / fn).is_file():
            return d / fn
    found = sorted(p for p in d.iterdir() if p.suffix in CHECKPOINT_EXTENSIONS and p.is_file())
    return found[0] if found else None


def local_hub_dir(repo: str, dirs: Sequence[str]) -> str | None:
    """A local folder (config.json + weights) for Hugging Face repo ``repo``:
    ``<dir>/<org>/<name>``, ``<dir>/<org>--<name>`` or ``<dir>/<name>`` in a
    weights directory, else the repo's snapshot in the Hugging Face cache."""
    for d in map(Path, dirs):
        for cand in (d / repo, d / repo.replace("/", "--"), d / repo.split("/")[-1]):
            if (cand / "config.json").is_file() and weights_in_dir(cand) is not None:
                return str(cand)
    config = hf_cached(repo, ["config.json"])
    if config and weights_in_dir(Path(config).parent) is not None:
        return str(Path(config).parent)
    return None


def looks_like_path(value: str, extensions: Sequence[str] = CHECKPOINT_EXTENSIONS) -> bool:
    """Whether a base_model value names a file or folder rather than a hub id."""
    return value.startswith(("/", "./", "../", "~")) or value.lower().endswith(tuple(extensions))


# A model name (timm: "convnext_tiny.fb_in1k") and a Hugging Face repo id
# ("org/name", optionally "hf-hub:org/name"), spelled strictly: letters, digits,
# '.', '_' and '-', no '..'. Joined to a weights directory such a name stays inside
# it; nothing else is ever looked up by name ('facebook/../../tmp/x' is a path).
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_NAME_RE = re.compile(_PART)
_HUB_RE = re.compile(rf"(?:hf-hub:)?({_PART}/{_PART})")


def is_model_name(value: str) -> bool:
    """A plain model name (a timm architecture, optionally with a pretrained tag)."""
    return _NAME_RE.fullmatch(value) is not None and ".." not in value


def hub_repo(value: str) -> str | None:
    """The repo id of a Hugging Face name ``org/name`` or ``hf-hub:org/name``; None otherwise."""
    m = _HUB_RE.fullmatch(value)
    return m.group(1) if m is not None and ".." not in value else None


def locate(value: str, resolve: Callable[..., str]) -> tuple[str, str]:
    """What a ``base_model`` value names: ``("path", p)`` a checkpoint on the server,
    ``("hub", "org/name")`` a Hugging Face repo, ``("name", n)`` a model name.

    ``resolve`` is the statement's Reader.resolve_path (realpath, then the allowed
    directories). A value that is not a strict name is a path, and ``resolve``
    refuses it before anything tests whether it exists: a disallowed path gets the
    same error (42501) whether or not it exists. A strict name is a path too when
    it names something below thanosql.data_dir, where the caller may look.
    """
    repo = hub_repo(value)
    if repo is None and (not is_model_name(value) or looks_like_path(value)):
        return "path", resolve(value, expand_user=True)
    if not value.startswith("hf-hub:"):
        try:
            local = resolve(value)
        except (InsufficientPrivilege, FileError):  # a symlink out of data_dir, or no data_dir: a name
            local = None
        if local is not None and os.path.exists(local):
            return "path", local
    return ("hub", repo) if repo is not None else ("name", value)
