"""Walk a folder of media files into rows: the logic behind thanosql.scan_folder
and the FolderFDW foreign data wrapper.

Pure Python (no plpy, no torch), so it is tested directly and shared by both
front ends. Layout conventions, as in torchvision's ImageFolder:

    root/[train|val|test/]<label>/<file>

``label`` is the name of the file's parent folder (NULL for files directly in
the root or directly in a split folder); ``split`` is set when the first folder
under the root is named train, val or test (or a common spelling of those).

Symlinks to files are followed (the row keeps the link's path, the size is the
target's). Symlinks to folders are followed after the real folders, once per
real folder: a link that loops back up the tree, or one to a folder already
walked, is not walked again, and a folder is listed under its real path when
the root holds it. With ``confine`` set, links whose target lies outside that folder are
not followed at all: a restricted role must not list files it may not read.
Unreadable files and folders are skipped and recorded in ``ScanStats``.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from thanosql_pg.errors import FileError, InvalidOption, IoError, WrongObjectType

COLUMNS = ("path", "file_name", "size_bytes", "label", "split", "media_type")
MEDIA_TYPES = ("image", "audio", "video", "other")

# Folder names that mark a split, lower-cased.
SPLITS = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}

# Formats some systems' mime.types do not know (mimetypes reads /etc/mime.types).
_EXTRA_TYPES = {
    ".webp": "image", ".avif": "image", ".heic": "image", ".jfif": "image",
    ".flac": "audio", ".opus": "audio", ".m4a": "audio", ".ogg": "audio",
    ".mkv": "video", ".webm": "video",
}


@dataclass(frozen=True)
class Entry:
    path: str
    file_name: str
    size_bytes: int
    label: str | None
    split: str | None
    media_type: str

    def as_tuple(self) -> tuple[str, str, int, str | None, str | None, str]:
        return (self.path, self.file_name, self.size_bytes, self.label, self.split, self.media_type)


@dataclass
class ScanStats:
    files: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def summary(self, limit: int = 3) -> str:
        """One line for a NOTICE: how many were skipped, and the first few."""
        shown = "; ".join(f"{p} ({why})" for p, why in self.skipped[:limit])
        more = f"; and {len(self.skipped) - limit} more" if len(self.skipped) > limit else ""
        return f"skipped {len(self.skipped)} unreadable files or folders: {shown}{more}"


def media_type_of(name: str) -> str:
    mime, _ = mimetypes.guess_type(name, strict=False)
    if mime:
        major = mime.split("/", 1)[0]
        if major in ("image", "audio", "video"):
            return major
    return _EXTRA_TYPES.get(os.path.splitext(name)[1].lower(), "other")


def check_media_filter(media_type: str | None) -> str | None:
    if media_type is None:
        return None
    value = media_type.lower()
    if value not in MEDIA_TYPES:
        raise InvalidOption(f'media_type must be one of {", ".join(MEDIA_TYPES)} or NULL; got {media_type!r}')
    return value


def check_root(root: str) -> None:
    """Raise FileError (or WrongObjectType, IoError) when ``root`` is not a folder we can list."""
    if not os.path.exists(root):
        raise FileError(f'folder "{root}" does not exist',
                        hint="Give a folder on the database server's file system.")
    if not os.path.isdir(root):
        raise WrongObjectType(f'"{root}" is not a folder',
                              hint="scan_folder lists the files of a folder; give the folder that holds it.")
    if not os.access(root, os.R_OK | os.X_OK):
        raise IoError(f'could not open folder "{root}": permission denied',
                      hint="The folder must be readable by the operating-system user the server runs as.")


def _inside(real: str, base: str) -> bool:
    return os.path.commonpath([real, base]) == base


def scan(root: str, *, recursive: bool = True, media_type: str | None = None,
         include_hidden: bool = False, confine: str | None = None,
         stats: ScanStats | None = None) -> Iterator[Entry]:
    """Yield the files under ``root`` in a stable order (depth first, names sorted).

    ``confine``: a real (symlink-free) folder path; nothing outside it is listed.
    Errors about the root itself are raised before the first row; everything
    below it that cannot be read is skipped and added to ``stats``.
    """
    check_root(root)
    wanted = check_media_filter(media_type)
    stats = stats if stats is not None else ScanStats()
    root = root.rstrip(os.sep) or os.sep
    seen_dirs: set[str] = set()  # real paths of the folders walked
    # (folder path, its parts relative to root): a stack, pushed in reverse so
    # that names come out sorted; folders reached through links wait in `links`
    # until every real folder is walked, so a link never hides its target.
    stack: list[tuple[str, tuple[str, ...]]] = [(root, ())]
    links: list[tuple[str, tuple[str, ...]]] = []
    while stack or links:
        folder, parts = stack.pop() if stack else links.pop(0)
        real = os.path.realpath(folder)
        if real in seen_dirs:  # a loop, or a folder already walked
            continue
        seen_dirs.add(real)
        try:
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as e:  # PermissionError, or the folder vanished meanwhile
            stats.skipped.append((folder, e.strerror or type(e).__name__))
            continue
        subdirs: list[tuple[str, tuple[str, ...]]] = []
        for child in children:
            if not include_hidden and child.name.startswith("."):
                continue
            entry = _visit(child, parts, recursive, wanted, confine, stats, subdirs, links)
            if entry is not None:
                stats.files += 1
                yield entry
        stack.extend(reversed(subdirs))


def _visit(child: os.DirEntry[str], parts: tuple[str, ...], recursive: bool, wanted: str | None,
           confine: str | None, stats: ScanStats, subdirs: list[tuple[str, tuple[str, ...]]],
           links: list[tuple[str, tuple[str, ...]]]) -> Entry | None:
    """One directory entry: a file becomes an Entry; a folder is queued in
    ``subdirs``, or in ``links`` when reached through a symlink."""
    try:
        is_link = child.is_symlink()
        is_dir = child.is_dir()  # follows symlinks
        if is_link:  # everything else lies inside the root, which was checked already
            real = os.path.realpath(child.path)
            if not os.path.exists(real):
                stats.skipped.append((child.path, "broken symbolic link"))
                return None
            if confine and not _inside(real, confine):
                stats.skipped.append((child.path, "links outside the allowed folder"))
                return None
        if is_dir:
            if recursive:
                (links if is_link else subdirs).append((child.path, (*parts, child.name)))
            return None
        if not child.is_file():
            return None  # sockets, fifos, devices: not media
        kind = media_type_of(child.name)
        if wanted is not None and kind != wanted:
            return None
        if not os.access(child.path, os.R_OK):
            stats.skipped.append((child.path, "permission denied"))
            return None
        size = child.stat().st_size  # follows symlinks: the target's size
    except OSError as e:
        stats.skipped.append((child.path, e.strerror or type(e).__name__))
        return None
    split = SPLITS.get(parts[0].lower()) if parts else None
    # The label is the parent folder, unless that folder is the root or the split folder.
    label_parts = parts[1:] if split else parts
    label = label_parts[-1] if label_parts else None
    return Entry(child.path, child.name, size, label, split, kind)
