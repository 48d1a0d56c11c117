"""Finding pretrained weights without surprises: local copies first, the hub
only when it answers.

Shared by every family that starts from published weights (timm models for
image classification and SimCLR backbones, transformers checkpoints for speech
recognition). The order is always the same: the weights directories ($THANOSQL_WEIGHTS_DIR,
<thanosql.data_dir>/weights; RowSource.weights_dirs),
then the server's Hugging Face cache, then the hub, and only after a fast
connectivity probe: the hub clients retry for about a minute when offline, and
nothing can cancel them meanwhile. Importing it imports no torch: the timm and
safetensors helpers below import what they need when called.

What a ``base_model`` (or a SimCLR backbone) names is decided by ``locate``:
only strictly spelled names are looked up by name (the weights directories are
read locations for such lookups only), and everything else is a path on the
server, checked like any input file.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from thanosql_pg.algorithms.shared.architecture import check_normalization, shape_mismatch
from thanosql_pg.errors import (
    DataCorrupted,
    DataError,
    FileError,
    InsufficientPrivilege,
    InvalidOption,
    ThanoSQLError,
    WeightsUnavailable,
)

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


# --- timm networks (image classification, SimCLR backbones) -----------------------------------
def _weights_hint(name: str, dirs: Sequence[str]) -> str:
    where = f"{dirs[0]}/{name}.safetensors" if dirs else f"$THANOSQL_WEIGHTS_DIR/{name}.safetensors"
    return (f"Put the weights at {where} (or in the server's Hugging Face / torch hub cache), "
            "pass base_model='/path/to/checkpoint.pth', or train from scratch with pretrained=False.")


def _local_timm_weights(name: str, cfg: Any, dirs: Sequence[str]) -> str | None:
    """A local file with the pretrained weights of timm model ``name``: the
    weights directories first, then the Hugging Face and torch hub caches."""
    from timm.models import split_model_name_tag

    arch, _ = split_model_name_tag(name)
    stems = [name, arch]
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    url = getattr(cfg, "url", None) if cfg is not None else None
    if hub_id:
        stems += [hub_id.replace("/", "--"), hub_id.split("/")[-1]]
    for d in map(Path, dirs):
        if not d.is_dir():
            continue
        for stem in dict.fromkeys(stems):
            for ext in CHECKPOINT_EXTENSIONS:
                if (d / (stem + ext)).is_file():
                    return str(d / (stem + ext))
            if (d / stem).is_dir() and (w := weights_in_dir(d / stem)) is not None:
                return str(w)
        if url and (d / os.path.basename(urlparse(url).path)).is_file():
            return str(d / os.path.basename(urlparse(url).path))
    if hub_id:
        filename = getattr(cfg, "hf_hub_filename", None)
        hit = hf_cached(hub_id, [filename] if filename else ["model.safetensors", "pytorch_model.bin"])
        if hit:
            return hit
    if url:
        import torch

        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        if cached.is_file():
            return str(cached)
    return None


def pretrained_network(name: str, num_classes: int, dirs: Sequence[str]) -> tuple[str, Any, str]:
    """(arch, network with pretrained weights and a new head, where they came from).

    ``name`` is a timm name (``convnext_tiny``, ``convnext_tiny.fb_in22k``) or a
    Hugging Face repo (``timm/convnext_tiny.fb_in1k``, ``hf-hub:org/repo``).
    Local copies win; the hub is used only when reachable.
    """
    import timm

    repo = hub_repo(name)
    if repo is None and not is_model_name(name):
        # never handed to timm or the hub clients, which read "local-dir:" and paths
        raise InvalidOption(f'"{name}" is neither a timm model name nor a Hugging Face repo id (org/name)',
                            hint="Name a timm model (convnext_tiny) or a repo (timm/convnext_tiny.fb_in1k),"
                            " or give a checkpoint file or folder as base_model.")
    try:
        if repo is None:
            try:
                cfg = timm.models.get_pretrained_cfg(name)
            except RuntimeError as e:
                raise InvalidOption(f'unknown pretrained weights "{name}": {e}') from None
            if not timm.models.is_model(timm.models.split_model_name_tag(name)[0]):
                raise InvalidOption(f'unknown timm model "{name}"',
                                    hint="See timm.list_models() for the names timm knows.")
            local = _local_timm_weights(name, cfg, dirs)
            if local:
                net = timm.create_model(name, pretrained=True, num_classes=num_classes,
                                        pretrained_cfg_overlay={"file": local})
                return timm.models.split_model_name_tag(name)[0], net, f"pretrained {name} ({local})"
            if cfg is None or not (cfg.hf_hub_id or cfg.url):
                raise WeightsUnavailable(f"timm has no pretrained weights for {name}",
                                         hint=_weights_hint(name, dirs))
            if not hub_reachable(hub_endpoint() if cfg.hf_hub_id else cfg.url):
                raise WeightsUnavailable(
                    f"pretrained weights for {name} are not on the server and the model hub is unreachable",
                    hint=_weights_hint(name, dirs))
            net = timm.create_model(name, pretrained=True, num_classes=num_classes)
            return timm.models.split_model_name_tag(name)[0], net, f"pretrained {name} (hub)"
        local_dir = local_hub_dir(repo, dirs)
        if local_dir:
            net = timm.create_model("local-dir:" + local_dir, pretrained=True, num_classes=num_classes)
            return _architecture(net, repo), net, f"pretrained {repo} ({local_dir})"
        if not hub_reachable(hub_endpoint()):
            raise WeightsUnavailable(
                f"weights for {repo} are not on the server and the model hub is unreachable",
                hint=_weights_hint(repo.replace("/", "--"), dirs))
        net = timm.create_model("hf-hub:" + repo, pretrained=True, num_classes=num_classes)
        return _architecture(net, repo), net, f"pretrained {repo} (hub)"
    except ThanoSQLError:
        raise
    except Exception as e:  # network, cache and format errors from timm / huggingface_hub
        raise WeightsUnavailable(f"could not load pretrained weights {name}: {e}",
                                 hint=_weights_hint(name, dirs)) from None


def checkpoint_network(path: str, arch: str, num_classes: int) -> tuple[str, Any, str]:
    """A network initialised from a checkpoint file or folder on the server.

    A folder with config.json is a timm/Hugging Face model folder (its own
    architecture); otherwise the file holds a state dict for ``arch``. The
    classifier is kept when its shape fits the label count, else replaced.
    """
    import timm

    p = Path(path)
    if not p.exists():
        raise FileError(f'checkpoint "{path}" does not exist')
    if p.is_dir() and (p / "config.json").is_file():
        try:
            net = timm.create_model("local-dir:" + str(p), pretrained=True, num_classes=num_classes)
        except Exception as e:  # timm's errors for a malformed folder
            raise DataError(f'cannot load the model folder "{path}": {e}') from None
        return _architecture(net, arch), net, f"checkpoint {path}"
    if p.is_dir():
        w = weights_in_dir(p)
        if w is None:
            raise FileError(f'checkpoint folder "{path}" holds no weights file',
                            hint="Expected model.safetensors, pytorch_model.bin or a *.pth/*.pt file.")
        p = w
    try:
        state = timm.models.load_state_dict(str(p), weights_only=True)
    except Exception as e:  # pickle refusals, truncated files, wrong formats
        raise DataError(f'cannot read checkpoint "{p}": {e}',
                        hint="Save a state dict: torch.save(model.state_dict(), path), or safetensors."
                        ) from None
    net = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    own = net.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if len(fitting) < 0.5 * len(own):
        raise DataError(
            f'checkpoint "{p}" does not fit architecture {arch}: {len(fitting)} of {len(own)} tensors match',
            hint="Use a checkpoint of the same architecture, or a model folder with config.json.")
    net.load_state_dict(fitting, strict=False)
    return arch, net, f"checkpoint {p}"


def _architecture(net: Any, default: str) -> str:
    """The timm architecture a network says it is (its pretrained_cfg, timm's dict), else ``default``."""
    return str(dict(getattr(net, "pretrained_cfg", None) or {}).get(ARCHITECTURE_KEY, default))


ARCHITECTURE_KEY = "architecture"  # timm's name for it in pretrained_cfg


def check_arch(arch: Any) -> bool:
    """Whether ``arch`` is a plain timm architecture (a model name timm registers):
    what a model stores and ``load`` passes to timm.create_model, which would also
    read "local-dir:<path>" and "hf-hub:<repo>"."""
    import timm

    return isinstance(arch, str) and is_model_name(arch) and timm.models.is_model(arch)


@dataclass(frozen=True)
class StoredImageModel:
    """What a timm-based model keeps in its stored options beside the declared ones
    (``Trained.options``: ImageInput.options() and the architecture)."""

    arch: str | None = None
    mean: list[Any] | None = None
    std: list[Any] | None = None
    weights: str | None = None  # where its weights came from, for DESCRIBE MODEL


def stored_arch(record: Any) -> str:
    """A stored model's architecture, refused (XX001) unless it is a plain timm name:
    the catalog row is the owner's to edit, and timm would follow a path in it."""
    from thanosql_pg.algorithms.contract import stored_fields

    arch = stored_fields(StoredImageModel, record).arch
    if arch is None or not check_arch(arch):
        raise DataCorrupted(f'model "{record.name}" stores {arch!r} as its architecture, which is not a timm'
                            " model name", hint="BUILD the model again.")
    return arch


def check_new_arch(arch: Any, origin: str) -> None:
    """A new network's architecture must be a plain timm name (a model folder's config.json
    names it): the model must load again later."""
    if not check_arch(arch):
        raise DataError(f"the architecture of {origin}, {arch!r}, is not a timm model name")


def timm_network(arch: str, num_classes: int, *, base_model: str | None, pretrained: bool,
                 resolve: Callable[..., str], dirs: Sequence[str]) -> tuple[str, Any, str]:
    """(arch, network, where its weights came from) for BUILD: ``base_model`` (a checkpoint
    on the server, a timm name or a hub repo) when given, else timm's ``arch`` with its
    pretrained weights or randomly initialised. ``num_classes`` 0: no classifier (features)."""
    import timm

    if base_model:
        kind, where = locate(base_model, resolve)
        if kind == "path":
            return checkpoint_network(where, arch, num_classes)
        return pretrained_network(base_model, num_classes, dirs)
    if pretrained:
        return pretrained_network(arch, num_classes, dirs)
    return arch, timm.create_model(arch, pretrained=False, num_classes=num_classes), "random initialisation"


def stored_normalization(record: Any) -> tuple[list[float], list[float]]:
    """A stored model's image mean and std (its stored options), checked: three finite
    numbers each, the std above 0 (DataCorrupted otherwise)."""
    from thanosql_pg.algorithms.contract import stored_fields

    stored = stored_fields(StoredImageModel, record)
    return (check_normalization("mean", stored.mean, positive=False),
            check_normalization("std", stored.std, positive=True))


def timm_load(arch: str, num_classes: int, state: dict[str, Any]) -> Any:
    """A timm network of a stored model: ``arch`` (check it first: stored_arch) with the stored tensors."""
    import timm

    return adopt_state(lambda: timm.create_model(arch, pretrained=False, num_classes=num_classes), state)


# --- stored weights ------------------------------------------------------------------------------
def state_payload(net: Any, metadata: dict[str, str] | None = None) -> bytes:
    """A network's weights as safetensors (no pickle on load)."""
    from safetensors.torch import save

    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    return save(state, metadata=metadata)


# safetensors' dtype names -> torch's
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
           "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def state_dict(payload: bytes | memoryview) -> dict[str, Any]:
    """The tensors of a safetensors payload. From bytes (the catalog's chunks) they are
    copied, as safetensors does; from a memoryview (the server's mapped, copy-on-write
    cache file) they are views of its pages, shared by every session that maps the same
    weights until one writes to them. DataCorrupted (XX001) when it is not safetensors data."""
    try:
        if not isinstance(payload, memoryview):
            from safetensors.torch import load

            return load(bytes(payload))
        return _mapped_state_dict(payload)
    except DataCorrupted:
        raise
    except Exception as e:  # safetensors' own errors; a malformed header's KeyError, TypeError ...
        raise DataCorrupted(f"the stored weights are not safetensors data: {e}") from None


def _mapped_state_dict(payload: memoryview) -> dict[str, Any]:
    import torch

    (n,) = struct.unpack("<Q", payload[:8])
    if n > len(payload) - 8:
        raise DataCorrupted("the stored weights are not safetensors data (bad header length)")
    header = json.loads(bytes(payload[8:8 + n]))
    base = 8 + n
    out: dict[str, Any] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = getattr(torch, _DTYPES.get(info.get("dtype", ""), ""), None)
        begin, end = info["data_offsets"]
        shape = [int(d) for d in info["shape"]]
        # the bytes must be exactly the shape's: a shape of zero bytes would otherwise be
        # allocated whatever size it claims
        if (dtype is None or not 0 <= begin <= end <= len(payload) - base or min(shape, default=0) < 0
                or end - begin != math.prod(shape) * dtype.itemsize):
            raise DataCorrupted(f"the stored weights are not safetensors data (tensor {name!r})")
        count = end - begin
        if count == 0:
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        flat = torch.frombuffer(payload, dtype=dtype, count=count // dtype.itemsize, offset=base + begin)
        out[name] = flat.view(shape)
    return out


def safetensors_metadata(payload: bytes | memoryview) -> dict[str, str]:
    """The metadata of a safetensors payload, without reading the tensors."""
    try:
        (n,) = struct.unpack("<Q", payload[:8])
        if n > len(payload) - 8:
            raise ValueError("bad header length")
        meta = json.loads(bytes(payload[8:8 + n])).get("__metadata__") or {}
    except (struct.error, ValueError, AttributeError) as e:  # short, not JSON, not an object
        raise DataCorrupted(f"the stored weights are not safetensors data: {e}") from None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise DataCorrupted("the stored weights' metadata is not a map of strings")
    return meta


def adopt_state(make: Callable[[], Any], state: dict[str, Any]) -> Any:
    """``make()`` with the stored tensors, in eval mode. Built on the meta device, the
    network adopts them: no random initialisation, which costs seconds for big models.
    The stored tensors must have exactly the names and shapes of the network's, and its
    kinds of type (checked on the meta device, before anything is allocated):
    DataCorrupted (XX001) otherwise."""
    import torch

    with torch.device("meta"):
        net = make()
    own = net.state_dict()
    differs = shape_mismatch({k: tuple(v.shape) for k, v in own.items()},
                             {k: tuple(v.shape) for k, v in state.items()})
    if differs:
        raise DataCorrupted(f"the stored weights do not match the stored architecture ({differs})")
    # the network computes in its own types: floats of another precision are converted (a
    # checkpoint saved in half precision), anything else is not a weight of it
    state = dict(state)
    for k, v in own.items():
        if state[k].dtype != v.dtype:
            if not (state[k].is_floating_point() and v.is_floating_point()):
                raise DataCorrupted(f"the stored weights have another type than the architecture's"
                                    f" ({k}: {state[k].dtype}, not {v.dtype})")
            state[k] = state[k].to(v.dtype)
    net.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in list(net.parameters()) + list(net.buffers())):
        net = make()
        net.load_state_dict(state, strict=True)
    net.eval()
    return net


# --- hints ---------------------------------------------------------------------------------------
def folder_hint(repo: str, dirs: Sequence[str], files: str, *, alternatives: str) -> str:
    """Where to put a checkpoint folder of hub repo ``repo`` (holding ``files``) so that it is found."""
    folder = repo.replace("/", "--")
    where = f"{dirs[0]}/{folder}" if dirs else f"$THANOSQL_WEIGHTS_DIR/{folder}"
    return (f"Put the checkpoint folder ({files}) at {where} or in the server's Hugging Face cache, "
            f"{alternatives}")
