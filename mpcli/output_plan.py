"""Every output name of a batch, chosen before anything is written.

A batch writes, for input file f with output stem s and frames r₁…rₙ::

    <s>.mp.json                          the manifest (one per input)
    <s>[_<r>].h5 | .nii.gz | _dicom/     one per frame × format

Names must be unique across the whole batch (inputs × frames × formats), never
contain a path separator, never start with a dot (hidden, and mp's temporary
names start with one) and stay short enough for any file system, so every
output lands inside ``--out`` and no output replaces another. ``output_stems``
makes the stems; ``plan_outputs`` adds the frames and formats and reports the
inputs whose names would collide, before the batch writes anything.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mpcli.scan import KSPACE_SUFFIXES

MANIFEST_SUFFIX = ".mp.json"
OUTPUT_NAMES = {"h5": "{}.h5", "nifti": "{}.nii.gz", "dicom": "{}_dicom"}
"""Output name of each format, from the volume's stem."""

MAX_STEM = 120  # bytes; leaves room for frame, format suffix and temporary-name tags under 255
_UNSAFE = re.compile(r"[^\w.+-]")


def sanitize(name: str) -> str:
    """A file-name-safe stem: word characters, ``.+-`` kept, the rest ``_``; never hidden."""
    safe = _UNSAFE.sub("_", name)
    safe = "_" + safe[1:] if safe.startswith(".") else safe
    return safe or "_"


def _shorten(stem: str, key: str) -> str:
    """``stem`` itself when short enough, else its head plus a hash of ``key``."""
    if len(stem.encode()) <= MAX_STEM:
        return stem
    head = stem.encode()[: MAX_STEM - 9].decode("utf-8", "ignore")
    return f"{head}_{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def _base_and_suffix(name: str, suffixes: tuple[str, ...]) -> tuple[str, str]:
    for suffix in suffixes:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix[1:]
    return name, ""


def output_stems(files: list[Path], suffixes: tuple[str, ...] = KSPACE_SUFFIXES) -> dict[Path, str]:
    """A distinct, safe output stem per input file.

    The stem is the file name without its k-space suffix. Inputs whose stems
    clash (case-insensitively, as on macOS and Windows file systems) get, in
    turn, the folders above them (relative to the inputs' common folder), their
    suffix (``x.h5`` → ``x_h5``), and finally a hash of their absolute path,
    until every stem is unique. Other inputs keep their plain stem.
    """
    paths = {f: Path(os.path.abspath(f)) for f in files}
    root = Path(os.path.commonpath([str(p.parent) for p in paths.values()])) if files else Path("/")

    def candidate(f: Path, level: int) -> str:
        p = paths[f]
        base, suffix = _base_and_suffix(p.name, suffixes)
        folders = list(p.parent.relative_to(root).parts)
        if level == 0:
            parts = [base]
        elif level <= len(folders):
            parts = [*folders[-level:], base]
        elif level == len(folders) + 1:
            parts = [*folders, base + (f"_{suffix}" if suffix else "")]
        else:
            parts = [*folders, base, hashlib.sha256(str(p).encode()).hexdigest()[:8]]
        return _shorten("__".join(sanitize(part) for part in parts), str(p))

    top = {f: len(paths[f].parent.relative_to(root).parts) + 2 for f in files}  # the hash level
    level = dict.fromkeys(files, 0)
    while True:
        stems = {f: candidate(f, level[f]) for f in files}
        groups: dict[str, list[Path]] = defaultdict(list)
        for f, s in stems.items():
            groups[s.casefold()].append(f)
        clashing = [f for g in groups.values() if len(g) > 1 for f in g]
        if not clashing:
            return stems
        if all(level[f] == top[f] for f in clashing):
            raise RuntimeError("could not make unique output names")  # a SHA-256 collision
        for f in clashing:
            level[f] = min(level[f] + 1, top[f])


def frame_stem(stem: str, frame: str) -> str:
    """The stem of one frame's outputs (``scan`` + ``rep1`` → ``scan_rep1``)."""
    return f"{stem}_{sanitize(frame)}" if frame else stem


def output_names(stem: str, frames: list[str], formats: tuple[str, ...]) -> list[str]:
    """Every name an input writes: its manifest, then each frame × format."""
    return [stem + MANIFEST_SUFFIX] + [OUTPUT_NAMES[fmt].format(frame_stem(stem, fr))
                                       for fr in frames for fmt in formats]


@dataclass
class OutputPlan:
    """Names per input, and the inputs refused because a name collides.

    Attributes:
        stems: input → output stem.
        frames: input → frame names as listed before reading (``[""]`` when
            the file could not be listed; reading it will report why).
        names: input → every output name (manifest first).
        conflicts: input → one-line reason it cannot be written.
    """

    stems: dict[Path, str]
    frames: dict[Path, list[str]]
    names: dict[Path, list[str]]
    conflicts: dict[Path, str] = field(default_factory=dict)


def plan_outputs(files: list[Path], stems: dict[Path, str], formats: tuple[str, ...],
                 list_frames: Callable[[Path], list[str]]) -> OutputPlan:
    """Name every output of the batch and find the inputs whose names collide.

    The plain names (manifest, single-frame outputs) are unique by
    construction of the stems; a frame's name (``scan_rep7.h5``) may equal
    another input's plain name or another frame's. Each input holding such a
    name is refused as a whole, so nothing is written for it and the other
    input's outputs are left alone.
    """
    frames = {}
    for f in files:
        try:
            frames[f] = list_frames(f) or [""]
        except Exception:  # unreadable: the batch reports it when it reads the file
            frames[f] = [""]
    names = {f: output_names(stems[f], frames[f], formats) for f in files}
    plain = {f: set(output_names(stems[f], [""], formats)) for f in files}
    claims: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        for name in dict.fromkeys(n.casefold() for n in names[f]):
            claims[name].append(f)
    plan = OutputPlan(stems, frames, names)
    for f in files:
        for name in names[f]:
            others = [g for g in claims[name.casefold()] if g != f]
            if others and name not in plain[f]:
                plan.conflicts[f] = (f"output {name} of frame-split input would also be written for "
                                     f"{others[0]}; reconstruct these inputs into different --out folders")
                break
    return plan
