"""Safe batch runs over files and folders: the loop behind ``mp reconstruct``.

Guarantees:
- inputs are only ever opened read-only; an output folder equal to or inside an
  input folder, or an output that would replace an input, is refused;
- every output name of the batch (inputs × frames × formats) is chosen before
  anything is written (:mod:`mpcli.output_plan`): names are unique, stay inside
  ``--out``, and an input whose frame outputs would collide with another
  input's outputs is refused;
- only files that ``mp`` wrote may be replaced: an output name already taken by
  a file no manifest of ours records (the user's own file, a symbolic link) is
  an output error unless ``overwrite``;
- every output is written atomically (temporary name, then rename); before the
  outputs, a *pending* manifest ``<stem>.mp.json`` claims their names, and the
  complete manifest (with each output's SHA-256) is written last, so a killed
  run leaves each output absent or complete, and its leftovers (outputs,
  temporaries) are ``mp``'s to replace on the next run;
- a failing file is reported and skipped, whatever the failure, and whatever
  it had written is removed; the others finish (the batch's exit code says
  *partial*);
- ``resume`` skips inputs whose manifest matches (input SHA-256, model SHA-256,
  version, options) and whose outputs are all present and unchanged, and redoes
  the others; ``overwrite`` redoes every input and may replace any file at an
  output name; with neither, an input that already has a manifest is an error;
- ``shard="i/n"`` keeps the inputs with index ≡ i (mod n) of the sorted list;
  names are chosen from the whole list first, so shards never collide.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mpcli import __version__
from mpcli.errors import EXIT_INPUT, EXIT_INTERNAL, InputError, MpError, OutputError, UsageError, printable
from mpcli.io.twix import looks_like_twix
from mpcli.output_plan import MANIFEST_SUFFIX, OutputPlan, frame_stem, output_stems, plan_outputs
from mpcli.scan import KSPACE_SUFFIXES, Scan, file_sha256


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
    """Expand folders, keep files; sorted, unique.

    Folders are walked recursively (symbolic links to folders followed, each
    folder once, so a link loop ends), keeping names with a k-space suffix that
    are not hidden; a ``.dat`` only when it starts like a Siemens twix file
    (``.dat`` is common for other data). A file named on the command line is kept whatever it is:
    reading it reports what is wrong with it (a FIFO, a broken link).
    """
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += _walk(p)
        elif p.exists() or p.is_symlink():
            files.append(p)
        else:
            raise InputError(p, "no such file or folder")
    seen, unique = set(), []
    for f in files:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return sorted(unique, key=lambda f: str(f))


def _walk(folder: Path) -> list[Path]:
    found, visited = [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        try:
            st = os.stat(root)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in visited:
            dirs[:] = []
            continue
        visited.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / n for n in names
                  if not n.startswith(".") and n.lower().endswith(KSPACE_SUFFIXES)
                  and (not n.lower().endswith(".dat") or looks_like_twix(Path(root) / n))]
    return found


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"i/n"`` (0 ≤ i < n) → (i, n); None → None."""
    if spec is None:
        return None
    try:
        i, n = (int(v) for v in spec.split("/"))
    except ValueError:
        raise UsageError(None, f"--shard must look like i/n (e.g. 0/4), got {spec!r}") from None
    if not 0 <= i < n:
        raise UsageError(None, f"--shard {spec}: need 0 <= i < n")
    return i, n


def select_shard(files: list[Path], shard: tuple[int, int] | None) -> list[Path]:
    """The inputs of shard (i, n): indices ≡ i (mod n) of the sorted list."""
    if shard is None:
        return files
    i, n = shard
    return [f for k, f in enumerate(files) if k % n == i]


def check_output_dir(out_dir: Path, inputs: list[Path]) -> None:
    """Refuse an output folder that is an input, lies inside an input folder
    (symlinks and hard links resolved), holds input files itself (its outputs
    could then replace an input), or is not a folder."""
    from mpcli.io.atomic import check_output_path

    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(out_dir, "exists and is not a folder; --out must be a folder")
    check_output_path(out_dir, inputs, container=True)
    out = Path(os.path.realpath(out_dir))
    for p in inputs:
        src = Path(os.path.realpath(p))
        if src.is_file() and out == src.parent:
            raise OutputError(out_dir, f"output folder holds the input {p.name}; choose another --out")


def make_output_dir(out_dir: Path) -> None:
    """Create ``out_dir`` (and parents); ``OutputError`` when that is impossible."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(out_dir, f"cannot create the output folder ({err.strerror or err})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError(out_dir, "output folder is not writable")


def manifest_path(out_dir: Path, stem: str) -> Path:
    return out_dir / f"{stem}{MANIFEST_SUFFIX}"


def read_manifest(path: Path) -> dict | None:
    """The manifest at ``path``, or None when absent or not one of ours."""
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) and "input_sha256" in body else None


def manifest_key(input_sha: str, model_sha: str | None, options: dict) -> dict:
    """What must match for an existing output to count as done."""
    return {"input_sha256": input_sha, "model_sha256": model_sha, "version": __version__,
            "options": options}


def is_complete(out_dir: Path, stem: str, key: dict) -> bool:
    """True when the manifest is complete, matches ``key``, and every listed output is unchanged."""
    m = read_manifest(manifest_path(out_dir, stem))
    if m is None or m.get("status", "complete") != "complete":
        return False
    if {k: m.get(k) for k in key} != json.loads(json.dumps(key)):
        return False
    outputs = m.get("outputs", {})
    return isinstance(outputs, dict) and all(_unchanged(out_dir, rel, digest) for rel, digest in outputs.items())


def owned_names(out_dir: Path, manifest: dict | None) -> set[str]:
    """Names in ``out_dir`` that ``mp`` provably wrote: those a pending manifest
    claimed, and those a complete manifest lists with their current SHA-256."""
    if manifest is None:
        return set()
    if manifest.get("status") == "pending":
        planned = manifest.get("planned", [])
        return {n for n in planned if isinstance(n, str)}
    outputs = manifest.get("outputs", {})
    if not isinstance(outputs, dict):
        return set()
    return {rel for rel, digest in outputs.items() if _unchanged(out_dir, rel, digest)}


def _unchanged(out_dir: Path, rel: str, digest: object) -> bool:
    p = out_dir / rel
    if not isinstance(rel, str) or "/" in rel or p.is_symlink() or not p.exists():
        return False
    try:
        return _digest(p) == digest
    except MpError:
        return False


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


def write_json(path: Path, body: dict) -> Path:
    """Write a manifest body atomically; ``OutputError`` naming ``path`` on failure."""
    from mpcli.io.atomic import atomic_file

    with atomic_file(path) as tmp:
        try:
            tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        except OSError as err:
            raise OutputError(path, f"cannot write ({err.strerror or err})") from None
    return path


def write_manifest(out_dir: Path, stem: str, key: dict, outputs: list[Path]) -> Path:
    """Record the outputs of one input (atomically, after all of them exist)."""
    body = dict(key, status="complete",
                outputs={p.relative_to(out_dir).as_posix(): _digest(p) for p in outputs})
    return write_json(manifest_path(out_dir, stem), body)


def write_pending_manifest(out_dir: Path, stem: str, key: dict, names: list[str]) -> Path:
    """Claim ``names`` for this input before writing them (see the module doc)."""
    return write_json(manifest_path(out_dir, stem), dict(key, status="pending", planned=names))


def _remove(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


# process(scan, stem) -> list of written output paths (for one frame)
Process = Callable[[Scan, str], list[Path]]


def run_batch(files: list[Path], out_dir: Path, process: Process, *, model_sha256: str | None,
              options: dict, formats: tuple[str, ...], resume: bool = False, overwrite: bool = False,
              stems: dict[Path, str] | None = None,
              on_file: Callable[[Outcome], None] | None = None,
              after: Callable[[Outcome], Outcome] | None = None) -> list[Outcome]:
    """Reconstruct each input file with ``process``; never stops on a bad file.

    ``formats`` are the output formats ``process`` writes (for the names
    planned before anything is written). ``after`` maps each input's outcome
    to its final one once its manifest is written (sending its DICOM series to
    a PACS: :class:`mpcli.delivery.PacsSender`); it must not raise. Returns
    one :class:`Outcome` per input, in order.
    """
    from mpcli.io.atomic import remove_stale_temps
    from mpcli.io.readers import list_frames

    make_output_dir(out_dir)
    plan = plan_outputs(files, stems or output_stems(files), formats, list_frames)
    remove_stale_temps(out_dir, [n for f in files for n in plan.names[f]])
    outcomes = []
    for f in files:
        t0 = time.perf_counter()
        outcome = process_file(f, out_dir, plan, process, model_sha256=model_sha256, options=options,
                               resume=resume, overwrite=overwrite)
        if after is not None:
            outcome = after(outcome)
        outcome.seconds = time.perf_counter() - t0
        outcomes.append(outcome)
        if on_file:
            on_file(outcome)
    return outcomes


def process_file(f: Path, out_dir: Path, plan: OutputPlan, process: Process, *, model_sha256: str | None,
                 options: dict, resume: bool, overwrite: bool) -> Outcome:
    """Read, reconstruct and write one input of ``plan``; every failure becomes a failed Outcome."""
    stem = plan.stems[f]
    try:
        return _process_file(f, out_dir, plan, process, model_sha256, options, resume, overwrite)
    except MpError as exc:
        return Outcome(f, stem, "failed", error=str(exc), exit_code=exc.exit_code)
    except MemoryError:
        return Outcome(f, stem, "failed", exit_code=EXIT_INPUT,
                       error=printable(f"{f}: not enough memory to reconstruct this file"))
    except Exception as exc:  # a bug: reported for this file, the batch goes on
        text = " ".join(f"{exc.__class__.__name__}: {exc}".split())[:300]
        return Outcome(f, stem, "failed", exit_code=EXIT_INTERNAL,
                       error=printable(f"{f}: internal error: {text} (set MP_DEBUG=1 for a traceback)"))


def _process_file(f: Path, out_dir: Path, plan: OutputPlan, process: Process, model_sha256: str | None,
                  options: dict, resume: bool, overwrite: bool) -> Outcome:
    from mpcli.io.readers import read_scans

    stem = plan.stems[f]
    if f in plan.conflicts:
        raise OutputError(f, plan.conflicts[f])
    key = manifest_key(file_sha256(f), model_sha256, options)
    manifest = manifest_path(out_dir, stem)
    if resume and is_complete(out_dir, stem, key):
        return Outcome(f, stem, "skipped")
    existing = read_manifest(manifest)
    if existing is not None and not (resume or overwrite):
        raise OutputError(manifest, "outputs exist; use --resume to skip finished files or --overwrite")
    owned = owned_names(out_dir, existing) | ({manifest.name} if existing is not None else set())
    before = {name: _signature(out_dir / name) for name in plan.names[f]}
    if not overwrite:
        _refuse_unowned(out_dir, [name for name, sig in before.items() if sig is not None], owned)
    scans = read_scans(f)  # everything is read before anything is written
    if [s.frame for s in scans] != plan.frames[f]:
        raise InputError(f, "the file changed while the batch was running (its frames differ)")
    try:
        write_pending_manifest(out_dir, stem, key, plan.names[f])
        written: list[Path] = []
        for scan in scans:
            written += process(scan, frame_stem(stem, scan.frame))
        write_manifest(out_dir, stem, key, written)
    except BaseException:  # no partial output: remove what this run wrote or mp owned
        _remove([out_dir / name for name, sig in before.items()
                 if name in owned or sig != _signature(out_dir / name)])
        raise
    return Outcome(f, stem, "done", written)


def _refuse_unowned(out_dir: Path, present: list[str], owned: set[str]) -> None:
    for name in present:
        if name not in owned:
            raise OutputError(out_dir / name, "exists and was not written by mp (no manifest records it); "
                              "move it away or use --overwrite to replace it")


def preflight(files: list[Path], out_dir: Path, plan: OutputPlan, *, overwrite: bool) -> None:
    """Raise the first :class:`OutputError` :func:`run_batch` would meet, before any work.

    For commands that spend minutes before they write (``mp adapt --recon``):
    a name collision, an existing manifest (without ``overwrite``) or a file
    ``mp`` did not write is reported at once.
    """
    for f in files:
        if f in plan.conflicts:
            raise OutputError(f, plan.conflicts[f])
        if overwrite:
            continue
        manifest = manifest_path(out_dir, plan.stems[f])
        if read_manifest(manifest) is not None:
            raise OutputError(manifest, "outputs exist; use --overwrite to replace them")
        _refuse_unowned(out_dir, [n for n in plan.names[f] if _signature(out_dir / n) is not None], set())


def _signature(path: Path) -> tuple | None:
    """(inode, size, mtime) of whatever is at ``path`` (links not followed), None if nothing."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
