"""Siemens twix raw data (``.dat``; VB, and VD/VE multi-measurement files), through twixtools.

A twix file holds one measurement (VB) or several (VD/VE "multi-raid": a file
header with one entry per measurement, normally adjustment/noise scans first and
the imaging measurement last). Each measurement is a protocol header (text
buffers ``Config``, ``Dicom``, ``Meas``, ``MeasYaps``…, parsed by
``twixtools.twixprot`` into nested dicts) followed by measurement data blocks
(MDBs): one readout each, an MDH header with named counters (``Lin``, ``Par``,
``Sli``, ``Ave``, ``Eco``, ``Phs``, ``Rep``, ``Set``, ``Seg``) and flags, and the
samples ``[C, samples]``. ``twixtools.mdb.Mdb`` decodes one block; the walk over
blocks is done here with bounds checks, so a truncated or garbage file is a
one-line ``InputError`` instead of a hang or a crash inside the library.

Reading the imaging (last) measurement, in order:

1. Refuse what would give a wrong image: non-Cartesian trajectories
   (``sKSpace.ucTrajectory`` ≠ 1), EPI and ramp sampling (EPI factor > 1,
   ``PHASCOR``/``REFLECT`` lines, regridding), 3-D (``ucDimension`` 3-D or any
   ``Par`` counter > 0), slices with different orientations.
2. Noise prewhitening from every ``NOISEADJSCAN`` line of the file
   (:func:`mpcli.io.ismrmrd.noise_whitener`), scaled by the dwell-time ratio when
   the noise was sampled in another measurement (noise variance ∝ 1/dwell).
3. Place image lines (``is_image_scan``): readout sample s at
   ``x = s − CenterCol + nx//2`` (nx = base resolution × readout oversampling),
   line ``Lin`` at column ``Lin − CenterLin + W//2``; lines met more than once
   (``Ave``, segments) are averaged. PAT reference lines (``PATREFSCAN``) fill
   the columns no image line acquired (calibration kept); lines missing from
   partial Fourier stay zero (mask 0) and the fraction is recorded.
   Samples are complex-conjugated: Siemens reconstructs with the *forward* FFT
   (its directions below assume it), mp with the inverse one, and
   ``ifft(conj k) = conj(fft k)`` is the scanner's image, pixel for pixel (mrpro
   conjugates Siemens data for the same reason; twixtools' geometry instead
   negates read and phase for inverse-FFT images).
4. Remove readout oversampling (:func:`mpcli.io.ismrmrd.remove_readout_oversampling`).
5. Order slices anatomically (ascending along the slice normal) and take the
   geometry from the protocol ``sSliceArray``: ``sPosition``, ``sNormal``,
   ``dInPlaneRot``, ``dReadoutFOV``/``dPhaseFOV``, ``dThickness``. Siemens patient
   coordinates (Sag, Cor, Tra) are DICOM's LPS; read/phase directions follow
   Siemens' ``fGSLCalcPRS`` (the same directions as the MDH slice quaternion,
   whose rotation-matrix columns are phase, read, slice).

One :class:`~mpcli.scan.Scan` per frame (``Rep``, ``Eco``, ``Phs``, ``Set``),
named like ISMRMRD frames (``rep1``, ``c1`` …) by :func:`~mpcli.io.ismrmrd.frame_names`.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mpcli.errors import InputError
from mpcli.io.ismrmrd import check_finite, frame_names, noise_whitener, remove_readout_oversampling
from mpcli.memory import check_fits
from mpcli.scan import Geometry, Scan, file_sha256

_VE_HEADER_BYTES = 10240  # space write_twix/scanners reserve for the multi-raid file header
_NAME = re.compile(rb"([A-Za-z]\w{3,})\x00(.{4})", re.DOTALL)
_TRAJECTORIES = {1: "Cartesian", 2: "radial", 4: "spiral", 8: "PROPELLER"}
# sKSpace.uc*PartialFourier codes → acquired fraction
_PARTIAL_FOURIER = {1: 4 / 8, 2: 5 / 8, 4: 6 / 8, 8: 7 / 8, 16: 1.0}


# ----------------------------------------------------------------------------- container


def _meas_header_ok(head: bytes, room: int) -> bool:
    """A measurement starts with ``uint32 hdr_len, uint32 n_buffers`` then ``name\\0 uint32 len``."""
    if len(head) < 16:
        return False
    hdr_len, n_buf = struct.unpack_from("<II", head)
    return 16 <= hdr_len <= room and 1 <= n_buf <= 64 and _NAME.match(head, 8) is not None


def _is_ve(first: bytes) -> bool:
    """twixtools' rule (``helpers.idea_version_check``): VD/VE files start with a small
    header size and a measurement count ≤ 64; VB files with the (large) protocol length."""
    a, b = struct.unpack_from("<II", first)
    return a < 10000 and b <= 64


def looks_like_twix(path: str | Path) -> bool:
    """Cheap content check (never raises): a VB or VD/VE twix file header."""
    try:
        path = Path(path)
        size = path.stat().st_size
        with open(path, "rb") as f:
            first = f.read(_VE_HEADER_BYTES)
            if len(first) < 16:
                return False
            if not _is_ve(first):  # a VB header may be followed by fewer bytes than it claims (truncated)
                return _meas_header_ok(first[:64], 1 << 40)
            entries = _raid_entries(first, size, strict=False)
            if not entries:
                return False
            off, end = entries[0]
            f.seek(off)
            return _meas_header_ok(f.read(64), end - off)
    except (OSError, ValueError, struct.error):
        return False


def _raid_entries(first: bytes, size: int, strict: bool = True, path: Path | None = None) -> list[tuple[int, int]]:
    """(offset, end) of each measurement of a VD/VE file, checked against the file size."""
    from twixtools.hdr_def import MultiRaidFileHeader

    if len(first) < MultiRaidFileHeader.itemsize:
        if strict:
            raise InputError(path, "truncated twix file (multi-measurement header incomplete)")
        return []
    raid = np.frombuffer(first[: MultiRaidFileHeader.itemsize], dtype=MultiRaidFileHeader)[0]
    count = int(raid["hdr"]["count_"])
    if not 1 <= count <= 64:
        if strict:
            raise InputError(path, f"twix file header lists {count} measurements (corrupt header)")
        return []
    out = []
    for k in range(count):
        off, length = int(raid["entry"][k]["off_"]), int(raid["entry"][k]["len_"])
        if length == 0 and k == count - 1:
            length = size - off  # scanners leave the last length 0 while writing
        if off < MultiRaidFileHeader.itemsize or off >= size or length <= 0:
            if strict:
                raise InputError(path, f"twix measurement {k} has offset {off}, length {length} (corrupt header)")
            return []
        if off + length > size and strict:  # a truncated file still looks like twix
            raise InputError(path, f"truncated twix file: measurement {k} ends at byte {off + length}, "
                                   f"the file has {size} bytes")
        out.append((off, off + length))
    return out


@dataclass
class Measurement:
    """One measurement of a twix file: parsed protocol and its data blocks (``twixtools.mdb.Mdb``)."""

    hdr: dict
    mdbs: list


def _walk(path: Path, fid, start: int, end: int, ve: bool) -> list:
    """Decode the MDBs in ``[start, end)``, refusing any block that leaves the measurement."""
    from twixtools import mdh_def
    from twixtools.mdb import Mdb

    header_t = mdh_def.Scan_header if ve else mdh_def.VB17_header
    header_size = ctypes.sizeof(header_t)
    channel_size = ctypes.sizeof(mdh_def.Channel_header) if ve else header_size
    mdbs, pos = [], start
    while pos + 128 < end:
        fid.seek(pos)
        raw = fid.read(header_size)
        if len(raw) < header_size:
            raise InputError(path, f"truncated twix file: data block header at byte {pos} is incomplete")
        mdh = header_t.from_buffer_copy(raw)
        if mdh_def.is_flag_set(mdh, "ACQEND"):
            break
        if mdh_def.is_flag_set(mdh, "SYNCDATA"):
            dma = int(mdh_def.get_dma_len(mdh))
            if dma < header_size:
                raise InputError(path, f"corrupt twix data block at byte {pos} (length {dma})")
        else:
            if mdh.UsedChannels == 0 or mdh.SamplesInScan == 0:
                raise InputError(path, f"corrupt twix data block at byte {pos} "
                                       f"({mdh.UsedChannels} channels, {mdh.SamplesInScan} samples)")
            dma = mdh.UsedChannels * (8 * mdh.SamplesInScan + channel_size) + (header_size if ve else 0)
        if pos + dma > end:
            raise InputError(path, f"truncated or corrupt twix file: data block at byte {pos} claims {dma} bytes, "
                                   f"{end - pos} remain")
        if not mdh_def.is_flag_set(mdh, "SYNCDATA"):
            fid.seek(pos)
            mdbs.append(Mdb(fid, ve))
        pos += dma
    return mdbs


@contextlib.contextmanager
def _open_twix(path: Path):
    """Open a twix file read-only; yield its measurements (:class:`Measurement`) with the
    file still open, since ``Mdb.data`` reads the samples from it on demand."""
    from twixtools import twixprot
    from twixtools.hdr_def import SingleMeasInit

    size = path.stat().st_size
    with open(path, "rb") as fid, contextlib.redirect_stdout(io.StringIO()):  # twixtools prints warnings
        first = fid.read(_VE_HEADER_BYTES)
        if len(first) < 16:
            raise InputError(path, "not a twix file (too short)")
        ve = _is_ve(first)
        spans = _raid_entries(first, size, path=path) if ve else [(0, size)]
        out = []
        for off, end in spans:
            fid.seek(off)
            init = np.frombuffer(fid.read(SingleMeasInit.itemsize), dtype=SingleMeasInit)
            if len(init) == 0:
                raise InputError(path, f"truncated twix file: measurement at byte {off} has no header")
            hdr_len = int(init[0]["hdr_len"])
            fid.seek(off)
            if not _meas_header_ok(fid.read(64), 1 << 40):
                raise InputError(path, f"not a twix file (no protocol header at byte {off})")
            if off + hdr_len > end:
                raise InputError(path, f"truncated twix file: protocol header of {hdr_len} bytes at byte {off}, "
                                       f"{end - off} bytes remain")
            fid.seek(off)
            hdr = twixprot.parse_twix_hdr(fid)
            if "MeasYaps" not in hdr:
                raise InputError(path, f"twix measurement at byte {off} has no MeasYaps protocol")
            out.append(Measurement(hdr, _walk(path, fid, off + hdr_len, end, ve)))
        yield out


# ----------------------------------------------------------------------------- protocol


def _get(d, *keys, default=None):
    """Nested lookup in twixtools' protocol dicts/lists; ``default`` when absent or empty."""
    for k in keys:
        try:
            d = d[k]
        except (KeyError, IndexError, TypeError):
            return default
    return default if d is None or d == "" else d


def prs_directions(normal, inplane_rot: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Phase and read unit vectors (Siemens patient coordinates = LPS) of a slice.

    Siemens' ``fGSLCalcPRS``: classify the normal ``n`` as mainly sagittal,
    coronal or transverse (largest component; ties resolved towards transverse,
    then coronal); the unrotated phase vector is, for transverse
    ``p = (0, n_z, −n_y)/√(n_y² + n_z²)``, coronal ``(n_y, −n_x, 0)/√(n_x² + n_y²)``,
    sagittal ``(−n_y, n_x, 0)/√(n_x² + n_y²)``; then
    ``p ← cos φ · p − sin φ · (n × p)`` for the in-plane rotation φ (radians) and
    ``r = n × p``.
    """
    n = np.asarray(normal, float)
    n = n / np.linalg.norm(n)
    a = np.abs(n)
    sag, cor, tra = a
    ge = lambda u, v: u > v or abs(u - v) <= 1e-6
    if ge(tra, sag) and ge(tra, cor):  # mainly transverse
        p = np.array([0.0, n[2], -n[1]]) / np.hypot(n[1], n[2])
    elif ge(cor, sag):  # mainly coronal
        p = np.array([n[1], -n[0], 0.0]) / np.hypot(n[0], n[1])
    else:  # mainly sagittal
        p = np.array([-n[1], n[0], 0.0]) / np.hypot(n[0], n[1])
    r = np.cross(n, p)
    if inplane_rot:
        p = np.cos(inplane_rot) * p - np.sin(inplane_rot) * r
        r = np.cross(n, p)
    return p, r


def _vec(d: dict | None) -> np.ndarray:
    d = d or {}
    return np.array([float(d.get("dSag", 0.0)), float(d.get("dCor", 0.0)), float(d.get("dTra", 0.0))])


def _identity(hdr: dict) -> dict[str, str]:
    """Patient/study identifiers (DICOM keywords), from the ``Config``/``Dicom`` buffers."""
    cfg, dcm = hdr.get("Config", {}), hdr.get("Dicom", {})
    out: dict[str, str] = {}
    name = _get(cfg, "tPatientName") or _get(cfg, "PatientName") or _get(dcm, "tPatientName")
    if name:
        out["PatientName"] = str(name)
    pid = _get(cfg, "PatientID")
    if pid:
        out["PatientID"] = str(pid)
    birth = str(_get(cfg, "PatientBirthDay", default=""))
    if re.fullmatch(r"\d{8}", birth):
        out["PatientBirthDate"] = birth
    sex = _get(dcm, "lPatientSex", default=_get(cfg, "PatientSex"))
    with contextlib.suppress(TypeError, ValueError):
        out["PatientSex"] = {1: "F", 2: "M", 3: "O"}[int(sex)]
    for key, value in (("FrameOfReferenceUID", _get(cfg, "FrameOfReference")),
                       ("InstitutionName", _get(dcm, "InstitutionName")),
                       ("SeriesDescription", _get(hdr, "MeasYaps", "tProtocolName")),
                       ("StudyDescription", _get(cfg, "tStudyDescription"))):
        if value:
            out[key] = str(value)
    return out


def _protocol(hdr: dict) -> dict[str, object]:
    """Non-identifying acquisition facts (ISMRMRD-style names, as the DICOM writer reads them)."""
    yaps, dcm = hdr["MeasYaps"], hdr.get("Dicom", {})
    out: dict[str, object] = {"systemVendor": str(_get(dcm, "Manufacturer", default="SIEMENS"))}
    for key, value in (("systemModel", _get(dcm, "ManufacturersModelName")),
                       ("softwareVersions", _get(dcm, "SoftwareVersions")),
                       ("protocolName", _get(yaps, "tProtocolName")),
                       ("sequence_type", str(_get(yaps, "tSequenceFileName", default="")).split("\\")[-1] or None),
                       ("patientPosition", _get(dcm, "tPatientPosition"))):
        if value:
            out[key] = str(value)
    field = _get(dcm, "flMagneticFieldStrength", default=_get(yaps, "sProtConsistencyInfo", "flNominalB0"))
    if field:
        out["systemFieldStrength_T"] = float(field)
    if _get(dcm, "lFrequency"):
        out["H1resonanceFrequency_Hz"] = int(_get(dcm, "lFrequency"))
    for key, src, scale in (("TR", "alTR", 1e-3), ("TE", "alTE", 1e-3),
                            ("flipAngle_deg", "adFlipAngleDegree", 1.0)):
        v = _get(yaps, src, 0)
        if v:
            out[key] = float(v) * scale  # µs → ms for TR/TE
    return out


# ----------------------------------------------------------------------------- checks


def _check_supported(path: Path, yaps: dict, meas: dict, image: list) -> None:
    """``InputError`` for acquisitions this reader would turn into a wrong image."""
    traj = int(_get(yaps, "sKSpace", "ucTrajectory", default=1))
    if traj != 1:
        raise InputError(path, f"non-Cartesian trajectory ({_TRAJECTORIES.get(traj, traj)}) is not supported")
    epi = int(_get(yaps, "sFastImaging", "lEPIFactor", default=1))
    if epi > 1 or any(m.is_flag_set("PHASCOR") or m.is_flag_set("REFLECT") for m in image):
        raise InputError(path, f"EPI (echo-train readouts with phase correction, EPI factor {epi}) is not supported")
    regrid = _get(meas, "alRegridMode", 0, default=1)
    if isinstance(regrid, (int, float)) and regrid >= 2:
        raise InputError(path, "ramp-sampled readouts (regridding) are not supported")
    dim = int(_get(yaps, "sKSpace", "ucDimension", default=2))
    if dim == 4 or any(m.mdh.Counter.Par > 0 for m in image):
        raise InputError(path, "3-D acquisitions (partition encoding) are not supported; 2-D multi-slice only")
    coils = {int(m.mdh.UsedChannels) for m in image}
    if len(coils) != 1:
        raise InputError(path, f"image lines differ in coil count ({sorted(coils)}); not supported")


def _whitener(path: Path, meas: list[Measurement], image_meas: Measurement, n_coils: int) -> np.ndarray | None:
    """``[C, C]`` prewhitening matrix from the file's noise-adjust lines, or None without any."""
    def dwell(hdr) -> float:
        return float(_get(hdr, "MeasYaps", "sRXSPEC", "alDwellTime", 0, default=0) or 0)

    blocks, dwells = [], []
    for m in meas:
        for b in m.mdbs:
            if b.is_flag_set("NOISEADJSCAN") and int(b.mdh.UsedChannels) == n_coils:
                blocks.append(np.asarray(b.data, np.complex64))  # [C, ns]
                dwells.append(dwell(m.hdr))  # the dwell time of the measurement the noise came from
    if not blocks:
        return None
    noise = np.concatenate(blocks, axis=1)  # [C, M]
    check_finite(path, noise, "noise scan")
    try:
        w = noise_whitener(noise)  # [C, C]
    except np.linalg.LinAlgError:
        raise InputError(path, "noise covariance is not positive definite") from None
    t_noise, t_data = dwells[0], dwell(image_meas.hdr)
    if t_noise > 0 and t_data > 0:
        w = w * np.sqrt(t_data / t_noise)  # noise variance ∝ bandwidth ∝ 1/dwell
    return w


# ----------------------------------------------------------------------------- reader


def read_twix(path: str | Path) -> list[Scan]:
    """Read the imaging measurement of a Siemens twix file: one ``Scan`` per frame (module doc).

    Raises ``InputError`` for anything malformed or unsupported. Numeric
    validation (finite, non-zero) is done by :func:`mpcli.io.readers.read_scans`.
    """
    path = Path(path)
    with _open_twix(path) as meas:
        imaging = [m for m in meas if any(b.is_image_scan() for b in m.mdbs)]
        if not imaging:
            raise InputError(path, "twix file has no imaging lines (only noise/adjustment data)")
        return _scans(path, meas, imaging[-1])


def _frame_key(b) -> tuple[int, int, int, int]:
    """(repetition, contrast, phase, set) of a data block: ISMRMRD's frame counters."""
    c = b.mdh.Counter
    return (int(c.Rep), int(c.Eco), int(c.Phs), int(c.Set))


def _scans(path: Path, meas: list[Measurement], im: Measurement) -> list[Scan]:
    hdr, yaps = im.hdr, im.hdr["MeasYaps"]
    image = [b for b in im.mdbs if b.is_image_scan()]
    ref = [b for b in im.mdbs if b.is_flag_set("PATREFSCAN") and not b.is_image_scan()
           and not (b.is_flag_set("PHASCOR") or b.is_flag_set("NOISEADJSCAN"))]
    _check_supported(path, yaps, hdr.get("Meas", {}), image + ref)
    nc = int(image[0].mdh.UsedChannels)
    ref = [b for b in ref if int(b.mdh.UsedChannels) == nc and b.mdh.Counter.Par == 0]

    slices = _get(yaps, "sSliceArray", "asSlice", default=[])
    if not slices:
        raise InputError(path, "twix protocol has no sSliceArray (slice geometry)")
    base = int(_get(yaps, "sKSpace", "lBaseResolution", default=0))
    if base <= 0:
        raise InputError(path, "twix protocol has no sKSpace.lBaseResolution")
    ns_max = max(int(b.mdh.SamplesInScan) for b in image)
    os_ro = float(_get(hdr, "Meas", "flReadoutOSFactor", default=0) or 0) or max(round(ns_max / base), 1)
    nx = round(base * os_ro)
    read_fov = float(_get(slices, 0, "dReadoutFOV", default=0))
    phase_fov = float(_get(slices, 0, "dPhaseFOV", default=0))
    thickness = float(_get(slices, 0, "dThickness", default=0)) or 1.0
    if read_fov <= 0 or phase_fov <= 0:
        raise InputError(path, "twix protocol has no readout/phase FOV")
    phase_os = float(_get(yaps, "sKSpace", "dPhaseOversamplingForDialog", default=0) or 0)
    if not 0 <= phase_os <= 4:  # a fraction of the FOV added: 0 … 1 on scanners
        raise InputError(path, f"twix protocol has an invalid phase oversampling ({phase_os})")
    n_img = int(_get(hdr, "Meas", "NImageLins", default=0) or 0) or round(base * phase_fov / read_fov)
    centre_lin = int(image[0].mdh.CenterLin)
    lins = np.array([b.mdh.Counter.Lin for b in image + ref])
    # W: the protocol's phase-encoding matrix (oversampled, FFT length); every line must fit in it
    w = max(round(n_img * (1 + phase_os)), int(_get(yaps, "sKSpace", "lPhaseEncodingLines", default=0)),
            int(_get(hdr, "Meas", "iPEFTLength", default=0) or 0))
    needed = 2 * max(centre_lin, int(lins.max()) + 1 - centre_lin)
    if needed > w:
        raise InputError(path, f"header/data mismatch: line counters up to {int(lins.max())} (centre {centre_lin}) "
                               f"do not fit the protocol's {w} phase-encoding lines")
    dr, dp = read_fov / base, phase_fov * (1 + phase_os) / w

    # slices: the MDH position of each Sli counter, matched to the protocol, ordered along the normal
    counters = sorted({int(b.mdh.Counter.Sli) for b in image})
    geometry, order = _geometry(path, slices, image, counters, (dr, dp, thickness))
    slot = {c: order.index(i) for i, c in enumerate(counters)}
    n_slices = len(counters)

    whitener = _whitener(path, meas, im, nc)
    w_c64 = None if whitener is None else whitener.astype(np.complex64)

    key = _frame_key
    by_frame: dict[tuple[int, int, int, int], list] = {}
    for b in image:
        by_frame.setdefault(key(b), []).append(b)
    keys = sorted(by_frame)
    # every frame's [S, C, nx, W] complex64, and temporaries of the same size while placing lines
    check_fits(path, len(keys) * n_slices * nc * nx * w * 8 * 4,
               f"k-space of {len(keys)} frame(s) × {n_slices} slices × {nc} coils × {nx}×{w}")
    names = frame_names(keys)
    sha = file_sha256(path)
    identity, protocol = _identity(hdr), _protocol(hdr)
    pf_phase = _PARTIAL_FOURIER.get(int(_get(yaps, "sKSpace", "ucPhasePartialFourier", default=16)), 1.0)
    pf_read = _PARTIAL_FOURIER.get(int(_get(yaps, "sKSpace", "ucReadoutPartialFourier", default=16)), 1.0)
    if pf_phase < 1:
        protocol["partial_fourier_phase"] = pf_phase
    if pf_read < 1:
        protocol["partial_fourier_readout"] = pf_read
    accel = int(_get(yaps, "sPat", "lAccelFactPE", default=1) or 1)
    if accel > 1:
        protocol["parallel_acceleration"] = accel
    if ref:
        protocol["calibration_lines"] = len({int(b.mdh.Counter.Lin) for b in ref})

    def place(blocks, k, count) -> None:
        """Add each block's valid samples at its (slice, readout, column) position."""
        for b in blocks:
            h = b.mdh
            ns, pre, post = int(h.SamplesInScan), int(h.CutOff.Pre), int(h.CutOff.Post)
            smp = np.arange(pre, ns - post)
            centre = int(h.CenterCol) if h.CenterCol > 0 else ns // 2
            x = smp - centre + nx // 2
            ok = (x >= 0) & (x < nx)
            col = int(h.Counter.Lin) - centre_lin + w // 2
            if not ok.any() or not 0 <= col < w:
                raise InputError(path, f"header/data mismatch: line {int(h.Counter.Lin)} falls outside the "
                                       f"encoded matrix {nx}×{w}")
            data = np.asarray(b.data, np.complex64)[:, smp[ok]]  # [C, X]
            if w_c64 is not None:
                data = w_c64 @ data  # [C, X]
            data = np.conj(data)  # Siemens reconstructs with the forward FFT: ifft(conj k) = conj(fft k)
            s = slot[int(h.Counter.Sli)]
            k[s, :, x[ok], col] += data.T  # [X, C]
            count[s, 0, x[ok], col] += 1.0

    scans = []
    for fk in keys:
        k = np.zeros((n_slices, nc, nx, w), np.complex64)  # [S, C, H, W]
        count = np.zeros((n_slices, 1, nx, w), np.float32)  # [S, 1, H, W]
        place(by_frame[fk], k, count)
        if ref:  # calibration lines of the same echo/phase/set fill columns no image line acquired
            kr, cr = np.zeros_like(k), np.zeros_like(count)
            place([b for b in ref if key(b)[1:] == fk[1:] and int(b.mdh.Counter.Sli) in slot], kr, cr)
            empty = (count.max(axis=2, keepdims=True) == 0) & (cr > 0)  # [S, 1, H, W]
            k = np.where(empty, kr, k)
            count = np.where(empty, cr, count)
        check_finite(path, k)
        acquired = count > 0
        k = np.where(acquired, k / np.maximum(count, 1), 0).astype(np.complex64)
        mask = (acquired & (np.abs(k).max(axis=1, keepdims=True) > 0)).astype(np.float32)
        k, mask = remove_readout_oversampling(path, k, mask, min(base, nx))
        k = k * mask
        scans.append(Scan(
            kspace=torch.from_numpy(np.array(k, dtype=np.complex64, order="C")),  # a writable copy
            mask=torch.from_numpy(np.array(mask, dtype=np.float32, order="C")),
            geometry=geometry,
            source=path,
            sha256=sha,
            format="twix",
            recon_size=(k.shape[-2], min(w, max(round(phase_fov / dp), 1))),
            frame=names[fk],
            identity=identity,
            protocol=protocol,
        ))
    return scans


def _geometry(path: Path, slices: list, image: list, counters: list[int],
              voxel: tuple[float, float, float]) -> tuple[Geometry, list[int]]:
    """Geometry of the image slices (anatomical order) and that order as indices into ``counters``.

    Each ``Sli`` counter is matched to the protocol slice whose ``sPosition``
    is nearest its MDH ``SlicePos`` (counter = protocol index when the MDH
    carries no position); slices must share one orientation.
    """
    prot_pos = np.array([_vec(_get(s, "sPosition")) for s in slices])  # [P, 3]
    prot_nrm = [_vec(_get(s, "sNormal")) for s in slices]
    first = {}
    for b in image:
        first.setdefault(int(b.mdh.Counter.Sli), b)
    mdh_pos = np.array([[float(v) for v in (first[c].mdh.SliceData.SlicePos.Sag, first[c].mdh.SliceData.SlicePos.Cor,
                                              first[c].mdh.SliceData.SlicePos.Tra)] for c in counters])
    if np.abs(mdh_pos).max() > 0:
        dist = np.linalg.norm(mdh_pos[:, None, :] - prot_pos[None, :, :], axis=-1)  # [S, P]
        match = [int(i) for i in dist.argmin(axis=1)]
        if dist.min(axis=1).max() > 1.0 or len(set(match)) != len(match):
            raise InputError(path, "slice positions in the data do not match the protocol's sSliceArray")
    else:
        if max(counters) >= len(slices):
            raise InputError(path, f"slice counter {max(counters)} but the protocol lists {len(slices)} slices")
        match = list(counters)
    normals = [prot_nrm[i] for i in match]
    rots = [float(_get(slices, i, "dInPlaneRot", default=0) or 0) for i in match]
    if np.linalg.norm(normals[0]) < 1e-6:
        raise InputError(path, "twix protocol slice normal (sNormal) is zero")
    n0 = normals[0] / np.linalg.norm(normals[0])
    for n, r in zip(normals, rots):
        if np.linalg.norm(n / max(np.linalg.norm(n), 1e-12) - n0) > 1e-4 or abs(r - rots[0]) > 1e-4:
            raise InputError(path, "slices with different orientations (several slice groups) are not supported")
    phase, read = prs_directions(n0, rots[0])
    centres = prot_pos[match]  # [S, 3]
    order = sorted(range(len(counters)), key=lambda i: float(centres[i] @ n0))
    vec = lambda v: tuple(float(a) for a in v)
    geometry = Geometry(voxel_size=voxel, read_dir=vec(read), phase_dir=vec(phase), slice_dir=vec(n0),
                        slice_centres=tuple(vec(centres[i]) for i in order), assumed=False)
    return geometry, order


def list_twix_frames(path: str | Path) -> list[str]:
    """Frame names :func:`read_twix` will return, from the data block headers only."""
    path = Path(path)
    with _open_twix(path) as meas:
        imaging = [m for m in meas if any(b.is_image_scan() for b in m.mdbs)]
        if not imaging:
            raise InputError(path, "twix file has no imaging lines (only noise/adjustment data)")
        keys = sorted({_frame_key(b) for b in imaging[-1].mdbs if b.is_image_scan()})
    names = frame_names(keys)
    return [names[k] for k in keys]


def read_twix_protocol(path: str | Path) -> dict:
    """The parsed protocol (``MeasYaps`` etc.) of the imaging measurement (for tests and ``mp info``)."""
    path = Path(path)
    with _open_twix(path) as meas:
        imaging = [m for m in meas if any(b.is_image_scan() for b in m.mdbs)]
        return (imaging or meas)[-1].hdr


__all__ = ["list_twix_frames", "looks_like_twix", "prs_directions", "read_twix",
           "read_twix_protocol"]
