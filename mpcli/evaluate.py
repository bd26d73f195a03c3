"""The library behind ``mp eval PRED... --ref REF``: load volumes, compare, tabulate.

A volume is a real magnitude image ``[S, H, W]`` float32, read from:

- our HDF5 outputs (dataset ``reconstruction``),
- fastMRI files (``reconstruction_rss``, else ``reconstruction_esc``),
- NIfTI ``.nii`` / ``.nii.gz`` (array order ``[H, W, S]`` in the file, as our
  writer stores it; transposed to ``[S, H, W]``).

Each prediction and the reference are centre-cropped to the reference's (H, W)
(fastMRI crops the reconstruction to the target size; fastMRI references are
square, 320 × 320, so this is the same as fastMRI's crop) and scored with
:mod:`mpcli.metrics` (NMSE, PSNR, SSIM per volume, data range = reference max).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mpcli import metrics
from mpcli.errors import InputError
from mpcli.scan import center_crop

H5_KEYS = ("reconstruction", "reconstruction_rss", "reconstruction_esc")
H5_SUFFIXES = (".h5", ".hdf5", ".mrd")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class Result:
    """Scores of one prediction against the reference (after the crop)."""

    name: str
    nmse: float
    psnr: float
    ssim: float
    shape: tuple[int, int, int]


def volume_name(path: Path) -> str:
    """File name without its image suffix (``a.nii.gz`` → ``a``)."""
    name = path.name
    for suffix in NIFTI_SUFFIXES[::-1] + H5_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _as_volume(arr: np.ndarray, path: Path) -> np.ndarray:
    """Magnitude float32 ``[S, H, W]``; InputError when not an image volume."""
    arr = np.asarray(arr)
    if np.iscomplexobj(arr):
        arr = np.abs(arr)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(path, f"image has non-numeric type {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or min(arr.shape) == 0:
        raise InputError(path, f"expected an image volume [slices, H, W], got shape {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise InputError(path, "image contains NaN or infinite values")
    return arr


def _load_h5(path: Path) -> tuple[np.ndarray, dict]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            key = next((k for k in H5_KEYS if k in f and isinstance(f[k], h5py.Dataset)), None)
            if key is None:
                raise InputError(path, "no image in the file (no reconstruction, "
                                       "reconstruction_rss or reconstruction_esc dataset)")
            arr = f[key][()]
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()
                     if isinstance(v, (str, int, float, np.generic))}
    except InputError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise InputError(path, f"not a readable HDF5 file ({err})") from None
    return _as_volume(arr, path), {"format": "hdf5", "dataset": key, "attrs": attrs}


def _load_nifti(path: Path) -> tuple[np.ndarray, dict]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine)
    except Exception as err:
        raise InputError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from None
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise InputError(path, f"expected a 3-D NIfTI image [H, W, S], got shape {arr.shape}")
    return _as_volume(np.transpose(arr, (2, 0, 1)), path), {"format": "nifti", "affine": affine.tolist()}


def load_volume(path: str | Path) -> tuple[np.ndarray, dict]:
    """Read an image volume ``[S, H, W]`` float32 (magnitude) and a small meta dict.

    Meta: ``format`` ("hdf5" | "nifti"), ``path``, and ``dataset`` + ``attrs``
    (HDF5) or ``affine`` (NIfTI). Raises :class:`InputError` when the file is
    missing, unreadable, of another format, or holds no finite image volume.
    """
    from mpcli.io.paths import expect_file

    path = expect_file(path, "an .h5, .nii or .nii.gz image file", suffixes=H5_SUFFIXES + NIFTI_SUFFIXES)
    lower = path.name.lower()
    if lower.endswith(H5_SUFFIXES):
        vol, meta = _load_h5(path)
    elif lower.endswith(NIFTI_SUFFIXES):
        vol, meta = _load_nifti(path)
    else:
        raise InputError(path, "unsupported format (expected .h5/.hdf5 or .nii/.nii.gz)")
    meta["path"] = str(path)
    return vol, meta


def compare(pred: np.ndarray, ref: np.ndarray, name: str, pred_path: Path | None = None) -> Result:
    """Score volume ``pred [S, H', W']`` against ``ref [S, H, W]`` after centre crops.

    Raises InputError (naming ``pred_path``) when slice counts differ or the
    prediction is smaller than the reference in-plane.
    """
    where = pred_path if pred_path is not None else name
    if pred.shape[0] != ref.shape[0]:
        raise InputError(where, f"has {pred.shape[0]} slices, the reference has {ref.shape[0]}")
    size = tuple(ref.shape[-2:])
    pred = center_crop(pred, size)
    if tuple(pred.shape[-2:]) != size:
        raise InputError(where, f"image {pred.shape[-2:]} is smaller than the reference {size}")
    return Result(
        name=name,
        nmse=metrics.nmse(ref, pred),
        psnr=metrics.psnr(ref, pred),
        ssim=metrics.ssim(ref, pred),
        shape=tuple(int(n) for n in pred.shape),  # type: ignore[arg-type]
    )


def labels(preds: list[Path]) -> list[str]:
    """Display names: the file stem, or ``folder/stem`` where stems repeat.

    ``mp eval recon/scan.h5 other/scan.h5`` gives ``recon/scan``, ``other/scan``.
    """
    preds = [Path(p) for p in preds]
    out = [volume_name(p) for p in preds]
    for longer in (lambda p: f"{p.parent.name}/{volume_name(p)}", lambda p: f"{p.parent.name}/{p.name}", str):
        repeated = {n for n in out if out.count(n) > 1}
        if not repeated:
            break
        out = [longer(p) if n in repeated else n for p, n in zip(preds, out)]
    return out


def evaluate_one(pred: str | Path, ref_volume: np.ndarray, name: str | None = None) -> Result:
    """Load one prediction file and score it against an already loaded reference."""
    pred = Path(pred)
    vol, _ = load_volume(pred)
    return compare(vol, ref_volume, name or volume_name(pred), pred)


def evaluate(preds: list[Path], ref: Path) -> list[Result]:
    """Score each prediction file against the reference file, in order.

    Results are named by :func:`labels`. Raises InputError on the first bad
    file (use :func:`evaluate_one` per file to keep going past failures).
    """
    ref_vol, _ = load_volume(ref)
    check_reference(ref, ref_vol)
    return [evaluate_one(p, ref_vol, n) for p, n in zip(preds, labels(preds))]


def check_reference(path: Path, ref: np.ndarray) -> None:
    """``InputError`` when the reference has no positive value: the data range
    (its maximum) is then zero and PSNR, NMSE and SSIM are undefined."""
    if not float(ref.max()) > 0:
        raise InputError(path, "reference image has no positive value (all zero?): PSNR, NMSE and SSIM "
                         "are undefined against it")


def figure_from_files(preds: list[Path], ref: Path, path: Path, results: list[Result] | None = None) -> Path:
    """Write the :func:`mpcli.report.figure` montage for prediction files vs the reference.

    Volumes are centre-cropped to the reference size and the middle slice is
    shown; ``results`` (in the order of ``preds``, as :func:`evaluate` returns
    them) supply the PSNR/SSIM captions and names. Returns the PNG path.
    """
    from mpcli.report import figure

    ref_vol, _ = load_volume(ref)
    names = [r.name for r in results] if results else labels(preds)
    titles = column_titles(names)
    images = {}
    for p, name in zip(preds, titles):
        vol, _ = load_volume(p)
        if vol.shape[0] != ref_vol.shape[0]:
            raise InputError(p, f"has {vol.shape[0]} slices, the reference has {ref_vol.shape[0]}")
        images[name] = center_crop(vol, tuple(ref_vol.shape[-2:]))  # [S, H, W]
    captions = {t: {"psnr": r.psnr, "ssim": r.ssim} for t, r in zip(titles, results or [])}
    return figure(ref_vol, images, path, captions)


def column_titles(names: list[str]) -> list[str]:
    """Figure column titles: ``names`` without the ``/stem`` they all share, when the
    folders alone still tell them apart (``cs/scan``, ``meta/scan`` → ``cs``, ``meta``)."""
    parts = [n.rsplit("/", 1) for n in names]
    if len(names) > 1 and all(len(p) == 2 for p in parts) and len({p[1] for p in parts}) == 1 \
            and len({p[0] for p in parts}) == len(names):
        return [p[0] for p in parts]
    return list(names)


def results_table(results: list[Result]):
    """A rich table: file, shape, NMSE, PSNR (dB), SSIM."""
    from rich.table import Table
    from rich.text import Text

    from mpcli.errors import printable

    table = Table(title="Evaluation against the reference")
    table.add_column("file", overflow="fold")  # a name wraps whole, never cut; never read as markup
    table.add_column("shape", justify="right")
    table.add_column("NMSE", justify="right")
    table.add_column("PSNR (dB)", justify="right")
    table.add_column("SSIM", justify="right")
    for r in results:
        table.add_row(Text(printable(r.name)), "×".join(map(str, r.shape)), f"{r.nmse:.4g}", f"{r.psnr:.2f}", f"{r.ssim:.4f}")
    return table


def results_json(results: list[Result]) -> str:
    """JSON list of ``{name, nmse, psnr, ssim, shape}`` objects (strict JSON).

    A metric that is not finite (PSNR of a reconstruction identical to the
    reference is +∞) is written as ``null`` with the reason in ``notes``.
    """
    rows = []
    for r in results:
        row = {**asdict(r), "shape": list(r.shape)}
        notes = [f"{k} is {row[k]} (identical to the reference)" for k in ("nmse", "psnr", "ssim")
                 if not math.isfinite(row[k])]
        row.update({k: None for k in ("nmse", "psnr", "ssim") if not math.isfinite(row[k])})
        if notes:
            row["notes"] = "; ".join(notes)
        rows.append(row)
    return json.dumps(rows, indent=2, allow_nan=False)
