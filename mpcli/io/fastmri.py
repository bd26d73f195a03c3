"""fastMRI multi-coil HDF5: reader and writer, and fastMRI-style reconstruction files.

Layout (facebookresearch/fastMRI):
- ``kspace`` ``[S, C, H, W]`` complex64 (H = readout, oversampled ×2 in the
  raw files: encoded x = 640, recon x = 320 for knee);
- ``ismrmrd_header``: the ISMRMRD XML header (encoded/recon matrix and FOV,
  phase-encode limits);
- optional ``mask`` ``[W]`` (test/challenge files), ``reconstruction_rss``
  ``[S, h, w]`` (the reference image), attrs ``acquisition``, ``max``,
  ``norm``, ``patient_id``. Files written by :func:`write_fastmri` also carry
  ``mp_geometry`` (JSON of every :class:`~mpcli.scan.Geometry` field).

Phase-encode padding: columns outside
``[W//2 − limits.center, W//2 − limits.center + limits.maximum + 1)`` were not
acquired (as fastMRI's ``SliceDataset`` computes them, with W = encoded y) and
are masked out. The readout size must match the header (encoded or recon x);
the phase-encode size only has to hold the header's lines.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import torch

from mpcli.errors import InputError
from mpcli.io.atomic import atomic_file
from mpcli.io.ismrmrd import (
    check_finite,
    header_identity,
    header_protocol,
    header_voxel_size,
    make_header,
    mask_4d,
    one_line,
    parse_header,
    remove_readout_oversampling,
)
from mpcli.memory import check_fits
from mpcli.physics.fft import ifft2c
from mpcli.scan import Geometry, Scan, file_sha256, mask_from_kspace

GEOMETRY_ATTR = "mp_geometry"
REFERENCE_KEYS = ("reconstruction", "reconstruction_rss", "reconstruction_esc")


def geometry_to_json(geometry: Geometry) -> str:
    """All :class:`Geometry` fields as a JSON string (for the ``mp_geometry`` attr)."""
    return json.dumps(dataclasses.asdict(geometry))


def geometry_from_json(text: str) -> Geometry:
    """Inverse of :func:`geometry_to_json` (lists become tuples)."""
    d = json.loads(text)
    tup = lambda v: tuple(float(a) for a in v)
    return Geometry(
        voxel_size=tup(d["voxel_size"]),
        read_dir=tup(d["read_dir"]),
        phase_dir=tup(d["phase_dir"]),
        slice_dir=tup(d["slice_dir"]),
        slice_centres=tuple(tup(c) for c in d["slice_centres"]),
        assumed=bool(d.get("assumed", False)),
    )


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return _text(value.item())
    return str(value)


def read_fastmri(path: str | Path) -> list[Scan]:
    """Read a fastMRI multi-coil file as one ``Scan``.

    Steps: check ``kspace`` is ``[S, C, H, W]`` and matches the header's encoded
    matrix; mask = stored ``mask`` (``[W]`` or ``[H, W]``) or the non-zero
    samples of ``kspace``, times the acquired phase-encode range; remove readout
    oversampling when encoded x > recon x; ``recon_size`` = recon matrix (x, y)
    clipped to the data. Numeric validation (finite, non-zero) is done by
    :func:`mpcli.io.readers.read_scans`.
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if "kspace" not in f:
                raise InputError(path, "no 'kspace' dataset: not a fastMRI file")
            ds = f["kspace"]
            if ds.ndim == 3:
                raise InputError(path, f"single-coil fastMRI is not supported (kspace {tuple(ds.shape)}, need [S, C, H, W])")
            if ds.ndim != 4:
                raise InputError(path, f"kspace has rank {ds.ndim} {tuple(ds.shape)}; need [S, C, H, W]")
            if not np.issubdtype(ds.dtype, np.complexfloating):
                raise InputError(path, f"kspace is {ds.dtype}, need complex")
            n = int(np.prod(ds.shape, dtype=np.float64))
            check_fits(path, n * (ds.dtype.itemsize + 3 * 8), "kspace " + "×".join(map(str, ds.shape)))
            kspace = ds[...].astype(np.complex64)  # [S, C, H, W]
            xml = f["ismrmrd_header"][()] if "ismrmrd_header" in f else None
            _, _, hh, w = ds.shape
            if "mask" in f and f["mask"].shape not in ((w,), (hh, w)):
                raise InputError(path, f"mask shape {f['mask'].shape} does not match kspace {hh}×{w} "
                                 "(need [W] or [H, W])")
            stored_mask = f["mask"][...] if "mask" in f else None
            ref = f.get("reconstruction_rss")
            reference = (ref[...].astype(np.float32) if isinstance(ref, h5py.Dataset) and ref.ndim == 3
                         and ref.shape[0] == ds.shape[0] and ref.shape[1] <= hh and ref.shape[2] <= w else None)
            attrs = {k: f.attrs[k] for k in f.attrs}
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise InputError(path, f"cannot read fastMRI data: {one_line(err)}") from None
    if xml is None:
        raise InputError(path, "no 'ismrmrd_header' dataset (fastMRI files carry one)")
    check_finite(path, kspace)
    hdr = parse_header(path, _text(xml))
    enc = hdr.encoding[0]
    em, rm = enc.encodedSpace.matrixSize, enc.reconSpace.matrixSize
    s, _, hh, w = kspace.shape
    lim = enc.encodingLimits.kspace_encoding_step_1 if enc.encodingLimits else None
    if hh not in (em.x, rm.x):
        raise InputError(path, f"header/data mismatch: header readout matrix {em.x} (recon {rm.x}), kspace has {hh} rows")
    if lim is not None and lim.maximum + 1 > w:
        raise InputError(path, f"header/data mismatch: header has {lim.maximum + 1} phase-encode lines, kspace {w} columns")

    # mask: stored, else detected; then the acquired phase-encode range only
    if stored_mask is not None:
        m = np.asarray(stored_mask).astype(np.float32)
        if m.shape not in ((w,), (hh, w)):
            raise InputError(path, f"mask shape {m.shape} does not match kspace {hh}×{w} (need [W] or [H, W])")
        mask = mask_4d(m, kspace.shape)  # [S, 1, H, W], a writable copy
    else:
        mask = mask_from_kspace(torch.from_numpy(kspace)).numpy()  # [S, 1, H, W]
    if lim is not None and lim.maximum > 0:
        left = w // 2 - lim.center  # = encoded y//2 − centre when W = encoded y (fastMRI)
        right = left + lim.maximum + 1
        if 0 <= left < right <= w:
            mask[..., :left] = 0
            mask[..., right:] = 0
    h_out = min(int(rm.x), hh) if rm.x > 0 else hh
    kspace, mask = remove_readout_oversampling(path, kspace, mask, h_out)
    kspace = kspace * mask  # [S, C, h_out, W]

    geometry = None
    if GEOMETRY_ATTR in attrs:
        try:
            geometry = geometry_from_json(_text(attrs[GEOMETRY_ATTR]))
        except (ValueError, KeyError, TypeError):
            geometry = None
        if geometry is not None and len(geometry.slice_centres) != s:
            raise InputError(path, f"header/data mismatch: {GEOMETRY_ATTR} has {len(geometry.slice_centres)} slices, kspace {s}")
    if geometry is None:
        geometry = Geometry.default(s, header_voxel_size(hdr))
    identity = header_identity(hdr)
    if "patient_id" in attrs:
        identity["PatientID"] = _text(attrs["patient_id"])
    protocol = header_protocol(hdr)
    if "acquisition" in attrs:
        protocol["acquisition"] = _text(attrs["acquisition"])
    if reference is not None and (reference.ndim != 3 or reference.shape[0] != s):
        reference = None  # a reference we cannot align is dropped, not trusted
    return [Scan(
        kspace=torch.from_numpy(np.ascontiguousarray(kspace, dtype=np.complex64)),
        mask=torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)),
        geometry=geometry,
        source=path,
        sha256=file_sha256(path),
        format="fastmri",
        recon_size=(min(int(rm.x) or h_out, h_out), min(int(rm.y) or w, w)),
        reference=reference,
        frame="",
        identity=identity,
        protocol=protocol,
    )]


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _write_attrs(f: h5py.File, attrs: dict) -> None:
    """HDF5 attrs: str/int/float/bool as they are, other values as JSON; None skipped."""
    for key, value in attrs.items():
        if value is not None:
            f.attrs[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)


def _rss(kspace: np.ndarray) -> np.ndarray:
    """Root-sum-of-squares image ``[S, H, W]`` of k-space ``[S, C, H, W]``."""
    img = ifft2c(torch.from_numpy(kspace))  # [S, C, H, W]
    return img.abs().pow(2).sum(1).sqrt().numpy()  # [S, H, W]


def write_fastmri(
    path: str | Path,
    kspace,
    mask=None,
    geometry: Geometry | None = None,
    reference=None,
    header_xml: str | None = None,
    attrs: dict | None = None,
    recon_size: tuple[int, int] | None = None,
    compression: str | None = None,
) -> Path:
    """Write a fastMRI multi-coil file (the real layout; see the module doc).

    Args:
        kspace: ``[S, C, H, W]`` complex (numpy or torch); written as complex64.
        mask: ``[W]`` or ``[H, W]`` (stored as ``mask``; k-space is not masked
            here), or None.
        geometry: stored as the ``mp_geometry`` JSON attr (and its voxel size
            in the generated header); when None no attr is written and the
            reader falls back to the header's voxel size (assumed geometry).
        reference: ``[S, h, w]`` image stored as ``reconstruction_rss``;
            ``max``/``norm`` attrs are computed from it (else from the RSS of
            ``kspace``).
        header_xml: ISMRMRD XML to store; generated with ``ismrmrd.xsd`` if None.
        attrs: extra attrs (``acquisition``, ``patient_id``…).
        recon_size: (h, w) of the header's reconSpace (default (H, W)).
        compression: HDF5 filter for ``kspace`` (``"gzip"`` shrinks the
            zero-filled lines of undersampled data; readers need nothing extra).
    """
    path = Path(path)
    k = _numpy(kspace).astype(np.complex64)  # [S, C, H, W]
    s, _, hh, w = k.shape
    if header_xml is None:
        voxel = (geometry or Geometry.default(s)).voxel_size
        header_xml = make_header((hh, w), recon_size or (hh, w), voxel, s)
    ref = None if reference is None else _numpy(reference).astype(np.float32)
    vol = ref if ref is not None else _rss(k)
    extra = dict(attrs or {})
    with _hdf5_file(path) as f:
        f.create_dataset("kspace", data=k, compression=compression,
                         chunks=(1, *k.shape[1:]) if compression else None)
        f.create_dataset("ismrmrd_header", data=np.bytes_(header_xml.encode()))
        if mask is not None:
            f.create_dataset("mask", data=_numpy(mask).astype(np.float32))
        if ref is not None:
            f.create_dataset("reconstruction_rss", data=ref)
        f.attrs["acquisition"] = str(extra.pop("acquisition", "unknown"))
        f.attrs["max"] = float(np.max(vol)) if vol.size else 0.0
        f.attrs["norm"] = float(np.linalg.norm(vol))
        if "patient_id" in extra:
            f.attrs["patient_id"] = str(extra.pop("patient_id"))
        if geometry is not None:
            f.attrs[GEOMETRY_ATTR] = geometry_to_json(geometry)
        _write_attrs(f, extra)
    return path


@contextmanager
def _hdf5_file(path: Path) -> Iterator[h5py.File]:
    """An HDF5 file built in memory, then written to ``path`` atomically.

    The HDF5 library never writes to disk itself: a full disk or a file-size
    limit surfaces as one ``OSError`` from a plain write (the caller names the
    output), never as an HDF5 error on close (which h5py reports from a
    destructor, on stderr, and may crash on).
    """
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        yield f
    with atomic_file(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def write_reconstruction(path: str | Path, image, attrs: dict | None = None) -> Path:
    """Write a fastMRI-style output: dataset ``reconstruction`` ``[S, H, W]`` float32.

    ``attrs`` values that are not str/int/float/bool are stored as JSON strings.
    The file is written beside ``path`` under a temporary name, then renamed.
    """
    path = Path(path)
    img = _numpy(image).astype(np.float32)  # [S, H, W]
    with _hdf5_file(path) as f:
        f.create_dataset("reconstruction", data=img)
        _write_attrs(f, attrs or {})
    return path


def _attr_value(value):
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        if value[:1] in "{[":
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def read_reconstruction(path: str | Path) -> tuple[np.ndarray, dict]:
    """Read ``reconstruction`` (ours), else ``reconstruction_rss`` / ``_esc`` (fastMRI).

    Returns the image ``[S, H, W]`` float32 and the file attrs (JSON strings
    decoded). Raises ``InputError`` when the file has none of these datasets.
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            key = next((k for k in REFERENCE_KEYS if k in f), None)
            if key is None:
                raise InputError(path, f"no reconstruction dataset (looked for {', '.join(REFERENCE_KEYS)})")
            img = f[key][...].astype(np.float32)
            attrs = {k: _attr_value(f.attrs[k]) for k in f.attrs}
    except (OSError, KeyError, ValueError) as err:
        raise InputError(path, f"cannot read reconstruction: {one_line(err)}") from None
    return img, attrs
