"""What the submit page's dataset picker browses: the subdirectories of a directory under
``daemon.data_roots``, with how many images, videos and captions each holds.

Confined to the data roots the way job paths are (``dpd.jobs.paths``): the asked path must
be absolute and free of ``..``, and its real location (every symlink followed) must lie under
a root; a subdirectory whose symlink leads out of every root is left out. Bounded: at most
``MAX_FOLDERS`` subdirectories are listed and ``MAX_FILES`` entries of each are counted, and
the answer says when either cap was reached. Blocking (directory reads): run it in a thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from dpd.jobs.paths import DataRoots, has_control_characters, is_under
from dpd.preprocess.uploads import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

MAX_FOLDERS: Final = 500
MAX_FILES: Final = 10_000
CAPTION_EXTENSION: Final = ".txt"


class FolderRefused(ValueError):
    """The asked path is malformed or leads out of the data roots (400)."""


class FolderMissing(FileNotFoundError):
    """The asked path is under a root but is no directory that can be read (404)."""


@dataclass(frozen=True)
class Counts:
    images: int = 0
    videos: int = 0
    captions: int = 0
    subfolders: int = 0
    capped: bool = False  # MAX_FILES entries were counted and more were left unread


@dataclass(frozen=True)
class Folder:
    name: str
    path: str  # canonical: every symlink followed
    counts: Counts


@dataclass(frozen=True)
class Listing:
    path: str | None  # None: the listing of the data roots themselves
    parent: str | None  # the folder above, while it is still under a root
    folders: list[Folder] = field(default_factory=list)
    truncated: bool = False  # MAX_FOLDERS were listed and more were left out


def count_files(directory: str, max_files: int = MAX_FILES) -> Counts:
    """Images, videos and captions directly in ``directory`` (by extension), and its
    subdirectories; stops after ``max_files`` entries."""
    images = videos = captions = subfolders = seen = 0
    capped = False
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if seen == max_files:
                    capped = True
                    break
                seen += 1
                suffix = os.path.splitext(entry.name)[1].lower()
                if entry.is_dir():
                    subfolders += 1
                elif suffix in IMAGE_EXTENSIONS:
                    images += 1
                elif suffix in VIDEO_EXTENSIONS:
                    videos += 1
                elif suffix == CAPTION_EXTENSION:
                    captions += 1
    except OSError:
        pass  # unreadable: counted as empty
    return Counts(images, videos, captions, subfolders, capped)


def resolve_folder(path: str, roots: DataRoots) -> str:
    """The canonical directory ``path`` names; FolderRefused or FolderMissing otherwise."""
    if not path or not os.path.isabs(path) or has_control_characters(path):
        raise FolderRefused(f"path must be an absolute directory path, got {path!r}")
    if ".." in Path(path).parts:
        raise FolderRefused(f"path must not contain '..', got {path!r}")
    if not is_under(os.path.normpath(path), roots.lexical):
        raise FolderRefused(f"{path!r} is not under a data root")
    try:
        real = os.path.realpath(path, strict=True)
    except OSError as err:
        raise FolderMissing(f"{path!r} does not exist or cannot be read") from err
    if not is_under(real, roots.resolved):
        raise FolderRefused(f"{path!r} resolves to {real!r}, outside every data root")
    if not os.path.isdir(real):
        raise FolderMissing(f"{path!r} is not a directory")
    return real


def list_folders(
    path: str | None,
    data_roots: list[Path],
    max_folders: int = MAX_FOLDERS,
    max_files: int = MAX_FILES,
) -> Listing:
    """The subdirectories of ``path`` (None: the data roots themselves), sorted by name."""
    roots = DataRoots.of(data_roots)
    if path is None:
        found = [(os.path.basename(r) or r, r) for r in roots.resolved if os.path.isdir(r)]
        folders = [Folder(name, real, count_files(real, max_files)) for name, real in found]
        return Listing(None, None, folders[:max_folders], len(folders) > max_folders)
    real = resolve_folder(path, roots)
    children: list[tuple[str, str]] = []
    truncated = False
    try:
        with os.scandir(real) as entries:
            for entry in entries:
                if not entry.is_dir():  # follows symlinks: a link to a directory counts
                    continue
                if len(children) == max_folders:
                    truncated = True
                    break
                child = os.path.realpath(entry.path)
                if is_under(child, roots.resolved):
                    children.append((entry.name, child))
    except OSError as err:
        raise FolderMissing(f"{path!r} cannot be read ({err.strerror})") from err
    children.sort()
    folders = [Folder(name, child, count_files(child, max_files)) for name, child in children]
    parent = os.path.dirname(real)
    above = parent if parent != real and is_under(parent, roots.resolved) else None
    return Listing(real, above, folders, truncated)
