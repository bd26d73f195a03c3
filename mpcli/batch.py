"""Safe batch runs over files and folders: the loop behind ``mp reconstruct``.

Guarantees:
- inputs are only ever opened read-only; an output folder equal to or inside an
  input folder, or an output that would replace an input, is refused;
- every output is written atomically (temporary name, then rename), and the
  per-input manifest ``<stem>.mp.json`` last, so a killed run leaves each output
  absent or complete;
- a failing file is reported and skipped, the others finish (outcome
  ``failed`` and the batch's exit code says *partial*);
- ``resume`` skips inputs whose manifest matches (input SHA-256, model SHA-256,
  version, options) and whose outputs are all present and unchanged;
  ``overwrite`` redoes them; otherwise existing outputs are an error for that file;
- ``shard="i/n"`` keeps the inputs with index ≡ i (mod n) of the sorted list;
  names are chosen from the whole list first, so shards never collide.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mpcli import __version__
from mpcli.errors import InputError, MpError, OutputError
from mpcli.scan import Scan, file_sha256

KSPACE_SUFFIXES = (".h5", ".hdf5", ".mrd")
MANIFEST_SUFFIX = ".mp.json"


@dataclass
class Outcome:
    """What happened to one input file."""

    input: Path
    stem: str
    status: str  # "done" | "skipped" | "failed"
    outputs: list[Path] = field(default_factory=list)
    error: str = ""
    exit_code: int = 0
    seconds: float = 0.0


def collect_inputs(paths: list[Path]) -> list[Path]:
    """Expand folders (recursively, k-space suffixes only), keep files; sorted, unique."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += [f for f in sorted(p.rglob("*")) if f.is_file()
                      and f.suffix.lower() in KSPACE_SUFFIXES and not f.name.startswith(".")]
        elif p.exists():
            files.append(p)
        else:
            raise InputError(p, "no such file or folder")
    seen, unique = set(), []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return sorted(unique, key=lambda f: str(f))


def output_stems(files: list[Path]) -> dict[Path, str]:
    """A distinct output stem per input: the file stem, prefixed by parent folders on clashes."""
    def stem(f: Path, depth: int) -> str:
        parts = list(f.resolve().parent.parts[-depth:]) if depth else []
        base = f.name.rsplit(".", 1)[0] if "." in f.name else f.name
        return "__".join([*parts, base])

    depth = 0
    while True:
        stems = {f: stem(f, depth) for f in files}
        if len(set(stems.values())) == len(files) or depth > 32:
            return stems
        depth += 1


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"i/n"`` (0 ≤ i < n) → (i, n); None → None."""
    if spec is None:
        return None
    try:
        i, n = (int(v) for v in spec.split("/"))
    except ValueError:
        raise InputError(None, f"--shard must look like i/n (e.g. 0/4), got {spec!r}") from None
    if not 0 <= i < n:
        raise InputError(None, f"--shard {spec}: need 0 <= i < n")
    return i, n


def select_shard(files: list[Path], shard: tuple[int, int] | None) -> list[Path]:
    """The inputs of shard (i, n): indices ≡ i (mod n) of the sorted list."""
    if shard is None:
        return files
    i, n = shard
    return [f for k, f in enumerate(files) if k % n == i]


def check_output_dir(out_dir: Path, inputs: list[Path]) -> None:
    """Refuse an output folder that is an input, lies inside an input folder
    (symlinks and hard links resolved), or holds input files itself: its
    outputs (``<stem>.h5``) could then replace an input."""
    from mpcli.io.atomic import check_output_path

    check_output_path(out_dir, inputs, container=True)
    out = out_dir.resolve()
    for p in inputs:
        src = Path(p).resolve()
        if src.is_file() and out == src.parent:
            raise OutputError(out_dir, f"output folder holds the input {p.name}; choose another --out")


def manifest_path(out_dir: Path, stem: str) -> Path:
    return out_dir / f"{stem}{MANIFEST_SUFFIX}"


def read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def manifest_key(input_sha: str, model_sha: str | None, options: dict) -> dict:
    """What must match for an existing output to count as done."""
    return {"input_sha256": input_sha, "model_sha256": model_sha, "version": __version__,
            "options": options}


def is_complete(out_dir: Path, stem: str, key: dict) -> bool:
    """True when the manifest matches ``key`` and every listed output is unchanged."""
    m = read_manifest(manifest_path(out_dir, stem))
    if m is None or {k: m.get(k) for k in key} != json.loads(json.dumps(key)):
        return False
    for rel, digest in m.get("outputs", {}).items():
        p = out_dir / rel
        if not p.exists() or _digest(p) != digest:
            return False
    return True


def _digest(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (sorted names and contents)."""
    if path.is_dir():
        import hashlib

        h = hashlib.sha256()
        for f in sorted(path.rglob("*")):
            if f.is_file():
                h.update(f.relative_to(path).as_posix().encode())
                h.update(file_sha256(f).encode())
        return h.hexdigest()
    return file_sha256(path)


def write_manifest(out_dir: Path, stem: str, key: dict, outputs: list[Path]) -> Path:
    """Record the outputs of one input (atomically, after all of them exist)."""
    from mpcli.io.atomic import atomic_file

    path = manifest_path(out_dir, stem)
    body = dict(key, outputs={p.relative_to(out_dir).as_posix(): _digest(p) for p in outputs})
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    return path


# process(scan, stem) -> list of written output paths (for one frame)
Process = Callable[[Scan, str], list[Path]]


def run_batch(files: list[Path], out_dir: Path, process: Process, *, model_sha256: str | None,
              options: dict, resume: bool = False, overwrite: bool = False,
              stems: dict[Path, str] | None = None,
              on_file: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Reconstruct each input file with ``process``; never stops on a bad file.

    Returns one :class:`Outcome` per input, in order.
    """
    import time

    from mpcli.io.readers import read_scans

    out_dir.mkdir(parents=True, exist_ok=True)
    stems = stems or output_stems(files)
    outcomes = []
    for f in files:
        t0 = time.perf_counter()
        stem = stems[f]
        try:
            sha = file_sha256(f)
            key = manifest_key(sha, model_sha256, options)
            if resume and is_complete(out_dir, stem, key):
                outcome = Outcome(f, stem, "skipped")
            else:
                if not overwrite and manifest_path(out_dir, stem).exists():
                    raise OutputError(manifest_path(out_dir, stem),
                                      "outputs exist; use --resume to skip finished files or --overwrite")
                written: list[Path] = []
                for scan in read_scans(f):
                    frame_stem = f"{stem}_{scan.frame}" if scan.frame else stem
                    written += process(scan, frame_stem)
                write_manifest(out_dir, stem, key, written)
                outcome = Outcome(f, stem, "done", written)
        except MpError as exc:
            outcome = Outcome(f, stem, "failed", error=str(exc), exit_code=exc.exit_code)
        except (OSError, RuntimeError, ValueError) as exc:
            outcome = Outcome(f, stem, "failed", error=f"{f}: {exc.__class__.__name__}: {exc}".splitlines()[0],
                              exit_code=1)
        outcome.seconds = time.perf_counter() - t0
        outcomes.append(outcome)
        if on_file:
            on_file(outcome)
    return outcomes
