"""``Scan``: one multi-coil Cartesian acquisition, as every reader returns it.

Conventions (see ``DESIGN.md``):
- ``kspace`` is ``[S, C, H, W]`` complex64 in fastMRI order: S slices, C coils,
  H readout (rows of the image), W phase encode (columns). Readout oversampling
  is already removed and noise prewhitening already applied by the reader.
- ``mask`` is ``[S, 1, H, W]`` float32 in {0, 1}: which k-space samples were
  acquired (1) or are zero-filled (0). It broadcasts against ``kspace``.
- ``Geometry`` places image voxels in patient coordinates, DICOM/ISMRMRD LPS,
  millimetres. Voxel (i, j) of slice k (i along H, j along W) sits at::

      p(i, j, k) = centre_k + (i − H//2)·dr·read_dir + (j − W//2)·dp·phase_dir

  i.e. ``centre_k`` (the ISMRMRD ``position`` of slice k) is the FFT-centre pixel
  (H//2, W//2) of the centred FFT. dr, dp are the in-plane voxel sizes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

Vec3 = tuple[float, float, float]

KSPACE_SUFFIXES = (".h5", ".hdf5", ".mrd", ".dat")  # .dat: Siemens twix
"""File suffixes collected from input folders (the content decides the format)."""


@dataclass(frozen=True)
class Geometry:
    """Image geometry in patient coordinates (LPS, mm).

    Attributes:
        voxel_size: (dr, dp, thickness) in mm: readout and phase voxel size,
            slice thickness.
        read_dir, phase_dir, slice_dir: LPS unit vectors of the H axis, the W
            axis and the slice normal.
        slice_centres: LPS position (mm) of the FFT-centre pixel of each slice,
            in the order of the ``kspace`` slices (any order: ascending or
            descending along ``slice_dir``).
        assumed: True when the file carried no geometry and defaults were used.
    """

    voxel_size: Vec3
    read_dir: Vec3 = (1.0, 0.0, 0.0)
    phase_dir: Vec3 = (0.0, 1.0, 0.0)
    slice_dir: Vec3 = (0.0, 0.0, 1.0)
    slice_centres: tuple[Vec3, ...] = ()
    assumed: bool = False

    @staticmethod
    def default(n_slices: int, voxel_size: Vec3 = (1.0, 1.0, 1.0)) -> Geometry:
        """Axial geometry centred at the origin, slices stacked along +z."""
        dz = voxel_size[2]
        centres = tuple((0.0, 0.0, (k - (n_slices - 1) / 2) * dz) for k in range(n_slices))
        return Geometry(voxel_size=voxel_size, slice_centres=centres, assumed=True)

    @property
    def slice_spacing(self) -> float:
        """Distance between consecutive slice centres (mm); thickness if one slice."""
        c = np.asarray(self.slice_centres, dtype=np.float64)
        if len(c) < 2:
            return float(self.voxel_size[2])
        return float(np.median(np.linalg.norm(np.diff(c, axis=0), axis=1)))

    def voxel_to_lps(self, shape: tuple[int, int]) -> np.ndarray:
        """4×4 affine from voxel indices (i, j, k) to LPS mm for images ``[S, H, W]``.

        The third column steps from one slice centre to the next (so it follows
        the slice order of the data, ascending or descending).
        """
        h, w = shape
        dr, dp, thick = self.voxel_size
        r = np.asarray(self.read_dir, float) * dr
        p = np.asarray(self.phase_dir, float) * dp
        c = np.asarray(self.slice_centres, float)
        if len(c) >= 2:
            s = (c[-1] - c[0]) / (len(c) - 1)
        else:
            s = np.asarray(self.slice_dir, float) * thick
        aff = np.eye(4)
        aff[:3, 0], aff[:3, 1], aff[:3, 2] = r, p, s
        aff[:3, 3] = c[0] - (h // 2) * r - (w // 2) * p
        return aff

    def voxel_to_ras(self, shape: tuple[int, int]) -> np.ndarray:
        """The same affine in RAS (NIfTI): LPS → RAS flips the x and y axes."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.voxel_to_lps(shape)

    def cropped(self, full: tuple[int, int], crop: tuple[int, int]) -> Geometry:
        """Geometry after a centre crop from ``full`` to ``crop`` (H, W).

        ``center_crop`` keeps the FFT-centre pixel at the new centre index when
        both sizes are even, so centres only move when parities differ.
        """
        dr, dp, _ = self.voxel_size
        # the new centre pixel crop//2 is old pixel (full − crop)//2 + crop//2
        shift_i = (full[0] - crop[0]) // 2 + crop[0] // 2 - full[0] // 2
        shift_j = (full[1] - crop[1]) // 2 + crop[1] // 2 - full[1] // 2
        offset = (shift_i * dr * np.asarray(self.read_dir) + shift_j * dp * np.asarray(self.phase_dir))
        centres = tuple(tuple(float(v) for v in np.asarray(c) + offset) for c in self.slice_centres)
        return replace(self, slice_centres=centres)


@dataclass(frozen=True)
class Scan:
    """One multi-coil Cartesian acquisition (one frame: a repetition is its own Scan).

    Attributes:
        kspace: ``[S, C, H, W]`` complex64 k-space, zeros where not acquired.
        mask: ``[S, 1, H, W]`` float32 sampling mask in {0, 1}.
        geometry: where the image voxels are (see :class:`Geometry`).
        source: the input file.
        sha256: SHA-256 of the input file's bytes.
        format: ``"fastmri"``, ``"ismrmrd"`` or ``"twix"``.
        recon_size: (h, w) of the displayed image (centre crop of ``[H, W]``).
        reference: ``[S, h, w]`` float32 reference image (e.g. fastMRI
            ``reconstruction_rss``) when the file has one, else None.
        frame: name suffix of this frame (``""``, or ``"rep1"`` …).
        identity: patient/study identifiers from the header (DICOM keyword →
            value). Never logged, never put in file names.
        protocol: non-identifying acquisition facts (field strength, TR, TE,
            sequence, vendor…), for provenance and DICOM.
    """

    kspace: torch.Tensor
    mask: torch.Tensor
    geometry: Geometry
    source: Path
    sha256: str
    format: str
    recon_size: tuple[int, int]
    reference: np.ndarray | None = None
    frame: str = ""
    identity: dict[str, str] = field(default_factory=dict)
    protocol: dict[str, object] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(S, C, H, W)."""
        return tuple(self.kspace.shape)  # type: ignore[return-value]

    @property
    def acceleration(self) -> float:
        """Nominal acceleration: total samples / acquired samples of one slice."""
        m = self.mask[0, 0]
        return float(m.numel() / max(float(m.sum()), 1.0))

    @property
    def name(self) -> str:
        """A file-name stem for outputs (input stem, plus the frame suffix)."""
        stem = self.source.name
        for suffix in KSPACE_SUFFIXES:
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        return f"{stem}_{self.frame}" if self.frame else stem


def open_regular(path: str | Path):
    """Open a regular file for reading (binary), refusing anything else at once.

    The file is opened without blocking and checked with ``fstat`` before a
    byte is read, so a FIFO or a device (``/dev/zero``) is refused instead of
    blocking or reading forever. Raises ``InputError`` (one line).
    """
    from mpcli.errors import InputError

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise InputError(path, _open_error(path, err)) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise InputError(path, "is a folder, expected a file")
        raise InputError(path, "not a regular file (a FIFO, device or socket cannot be read)")
    return os.fdopen(fd, "rb")


def read_small_file(path: str | Path, limit: int = 1 << 20) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (configs, headers)."""
    from mpcli.errors import InputError

    with open_regular(path) as f:
        try:
            data = f.read(limit + 1)
        except OSError as err:
            raise InputError(path, f"cannot read ({err.strerror or err})") from None
    if len(data) > limit:
        raise InputError(path, f"larger than {limit} bytes; not a configuration file")
    return data


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a regular file's bytes (read in chunks, read-only).

    Raises ``InputError`` (one line) when the path cannot be opened or read or
    is not a regular file (see :func:`open_regular`).
    """
    from mpcli.errors import InputError

    h = hashlib.sha256()
    with open_regular(path) as f:
        try:
            while block := f.read(chunk):
                h.update(block)
        except OSError as err:
            raise InputError(path, f"cannot read ({err.strerror or err})") from None
    return h.hexdigest()


def _open_error(path: str | Path, err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return "symbolic link loop"
    if err.errno == errno.ENOENT and os.path.islink(path):
        return "broken symbolic link (its target does not exist)"
    if err.errno == errno.ENOENT:
        return "no such file"
    return f"cannot open ({err.strerror or err})"


def mask_from_kspace(kspace: torch.Tensor) -> torch.Tensor:
    """Detect the sampling mask ``[S, 1, H, W]`` from k-space ``[S, C, H, W]``.

    A sample counts as acquired when any coil is non-zero there. For Cartesian
    1-D undersampling this marks whole phase-encode lines; for 2-D patterns
    (Poisson-disc) individual samples.
    """
    return (kspace.abs().amax(dim=1, keepdim=True) > 0).to(torch.float32)


def center_crop(x: torch.Tensor | np.ndarray, size: tuple[int, int]):
    """Centre crop of the last two axes to ``size`` (h, w) (fastMRI convention)."""
    h, w = x.shape[-2:]
    ch, cw = min(size[0], h), min(size[1], w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top : top + ch, left : left + cw]
