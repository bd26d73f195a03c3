"""ISMRMRD HDF5 (Cartesian 2-D, multi-slice): reader, writer and header helpers.

Layout read: a group (normally ``dataset``) holding ``xml`` (the XML header) and
``data`` (compound ``head``/``traj``/``data`` acquisitions, one k-space line
each; ``data`` is a flat float32 array of interleaved real/imag, coil-major:
``[C, samples]``). Acquisitions are read in bulk with h5py, never one by one.

Reading, in order:
1. Drop lines that are not image data (noise, navigator, phase correction,
   dummy, RT/HP feedback, surface-coil correction, phase stabilisation);
   keep parallel-calibration lines (they are k-space like any other).
2. Place line ``kspace_encode_step_1`` of slice ``slice`` at column
   ``ky + W//2 − limits.center`` of the encoded matrix ``[H=x_enc, W=y_enc]``;
   samples at ``x = s − center_sample + H//2`` (valid samples only, between
   ``discard_pre`` and ``discard_post``). Repeated lines (averages) are averaged.
3. Prewhiten with the noise scans, when there are any (:func:`noise_whitener`).
4. Remove readout oversampling (:func:`remove_readout_oversampling`).

One :class:`~mpcli.scan.Scan` per frame (repetition, and contrast/phase/set
when those vary); frame names ``rep1``, ``c0_rep2``… only name counters that vary.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import torch

from mpcli.errors import InputError
from mpcli.memory import check_fits
from mpcli.physics.fft import fft1c, ifft1c
from mpcli.scan import Geometry, Scan, file_sha256

# ISMRMRD acquisition flags (1-based bit numbers: set when flags & (1 << (bit-1))).
ACQ_FIRST_IN_SLICE = 7
ACQ_LAST_IN_SLICE = 8
ACQ_IS_NOISE_MEASUREMENT = 19
ACQ_IS_PARALLEL_CALIBRATION = 20
ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING = 21
ACQ_IS_NAVIGATION_DATA = 23
ACQ_IS_PHASECORR_DATA = 24
ACQ_LAST_IN_MEASUREMENT = 25
ACQ_IS_HPFEEDBACK_DATA = 26
ACQ_IS_DUMMYSCAN_DATA = 27
ACQ_IS_RTFEEDBACK_DATA = 28
ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA = 29
ACQ_IS_PHASE_STABILIZATION_REFERENCE = 30
ACQ_IS_PHASE_STABILIZATION = 31

#: Lines that carry no image k-space and are skipped (noise is used for whitening).
SKIPPED_FLAGS = (
    ACQ_IS_NOISE_MEASUREMENT,
    ACQ_IS_NAVIGATION_DATA,
    ACQ_IS_PHASECORR_DATA,
    ACQ_IS_HPFEEDBACK_DATA,
    ACQ_IS_DUMMYSCAN_DATA,
    ACQ_IS_RTFEEDBACK_DATA,
    ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA,
    ACQ_IS_PHASE_STABILIZATION_REFERENCE,
    ACQ_IS_PHASE_STABILIZATION,
)


def flag_bit(flag: int) -> int:
    """Bit mask of a 1-based ISMRMRD flag number (``is_flag_set`` semantics)."""
    return 1 << (flag - 1)


def one_line(err: BaseException | str, limit: int = 200) -> str:
    """An exception message squeezed onto one line (for ``InputError`` reasons)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_finite(path: str | Path, values: np.ndarray, what: str = "k-space") -> None:
    """``InputError`` when ``values`` (any float/complex array) has NaN or Inf."""
    v = np.asarray(values)
    v = v.view(np.float32) if v.dtype == np.complex64 else v
    if np.isnan(v).any():
        raise InputError(path, f"{what} contains NaN values")
    if np.isinf(v).any():
        raise InputError(path, f"{what} contains Inf values")


# ----------------------------------------------------------------------------- header


def parse_header(path: str | Path, xml: bytes | str):
    """Parse an ISMRMRD XML header with ``ismrmrd.xsd.CreateFromDocument``.

    Falls back to a lenient parse (unknown elements ignored) for headers written
    against another schema version. Raises ``InputError`` when neither works or
    when the header has no encoding.
    """
    import ismrmrd.xsd

    if isinstance(xml, np.ndarray):
        xml = xml.item()
    try:
        hdr = ismrmrd.xsd.CreateFromDocument(xml)
    except Exception:
        try:
            from xsdata.formats.dataclass.parsers import XmlParser
            from xsdata.formats.dataclass.parsers.config import ParserConfig

            parser = XmlParser(config=ParserConfig(fail_on_unknown_properties=False))
            text = xml.decode("utf-8", "replace") if isinstance(xml, bytes) else str(xml)
            hdr = parser.from_string(text, ismrmrd.xsd.ismrmrdHeader)
        except Exception as err:
            raise InputError(path, f"ISMRMRD header XML is invalid: {one_line(err)}") from None
    if not hdr.encoding:
        raise InputError(path, "ISMRMRD header has no <encoding>")
    enc = hdr.encoding[0]
    for name, space in (("encoded", enc.encodedSpace), ("recon", enc.reconSpace)):
        m = getattr(space, "matrixSize", None)
        if m is None or any(v is None or v < 0 for v in (m.x, m.y, m.z)):
            raise InputError(path, f"ISMRMRD header has an invalid {name} matrix size "
                             f"({getattr(m, 'x', None)}, {getattr(m, 'y', None)}, {getattr(m, 'z', None)})")
    return hdr


def _dicom_date(value) -> str:
    return str(value).replace("-", "")[:8]


def _dicom_time(value) -> str:
    return str(value).replace(":", "").split(".")[0][:6]


def header_identity(hdr) -> dict[str, str]:
    """Patient/study identifiers of a header, keyed by DICOM keyword (strings)."""
    out: dict[str, str] = {}

    def put(key: str, value, conv=str) -> None:
        if value is not None and str(value) != "":
            out[key] = conv(value)

    subj = hdr.subjectInformation
    if subj is not None:
        put("PatientName", subj.patientName)
        put("PatientID", subj.patientID)
        put("PatientBirthDate", subj.patientBirthdate, _dicom_date)
        put("PatientSex", subj.patientGender)
    study = hdr.studyInformation
    if study is not None:
        put("StudyInstanceUID", study.studyInstanceUID)
        put("StudyID", study.studyID)
        put("AccessionNumber", study.accessionNumber)
        put("StudyDate", study.studyDate, _dicom_date)
        put("StudyTime", study.studyTime, _dicom_time)
        put("ReferringPhysicianName", study.referringPhysicianName)
        put("StudyDescription", study.studyDescription)
    meas = hdr.measurementInformation
    if meas is not None:
        put("SeriesDescription", meas.seriesDescription or meas.protocolName)
        put("FrameOfReferenceUID", meas.frameOfReferenceUID)
    sys_ = hdr.acquisitionSystemInformation
    if sys_ is not None:
        put("InstitutionName", sys_.institutionName)
    return out


def header_protocol(hdr) -> dict[str, object]:
    """Non-identifying acquisition facts of a header (ISMRMRD element names)."""
    out: dict[str, object] = {}
    sys_ = hdr.acquisitionSystemInformation
    if sys_ is not None:
        for key in ("systemVendor", "systemModel", "systemFieldStrength_T"):
            if getattr(sys_, key) is not None:
                out[key] = getattr(sys_, key)
    seq = hdr.sequenceParameters
    if seq is not None:
        for key in ("TR", "TE", "TI", "flipAngle_deg"):
            values = getattr(seq, key)
            if values:
                out[key] = float(values[0])
        if seq.sequence_type:
            out["sequence_type"] = seq.sequence_type
    meas = hdr.measurementInformation
    if meas is not None:
        if meas.patientPosition is not None:
            out["patientPosition"] = getattr(meas.patientPosition, "value", str(meas.patientPosition))
        if meas.protocolName:
            out["protocolName"] = meas.protocolName
    cond = hdr.experimentalConditions
    if cond is not None and cond.H1resonanceFrequency_Hz:
        out["H1resonanceFrequency_Hz"] = int(cond.H1resonanceFrequency_Hz)
    return out


def header_voxel_size(hdr) -> tuple[float, float, float]:
    """(dr, dp, thickness) mm = recon FOV / recon matrix; thickness = recon FOV z.

    A zero (absent) FOV gives 1 mm; any other value is passed on as it is, so
    :func:`mpcli.io.readers.validate_geometry` refuses NaN or negative sizes.
    """
    rs = hdr.encoding[0].reconSpace
    m, fov = rs.matrixSize, rs.fieldOfView_mm
    # an absent (zero) FOV means 1 mm; NaN or a negative FOV is kept, for validation to refuse
    dr = fov.x / m.x if m.x and fov.x != 0 else 1.0
    dp = fov.y / m.y if m.y and fov.y != 0 else 1.0
    dz = fov.z if fov.z != 0 else 1.0
    return (float(dr), float(dp), float(dz))


def make_header(
    encoded: tuple[int, int],
    recon: tuple[int, int],
    voxel_size: tuple[float, float, float],
    n_slices: int = 1,
    n_repetitions: int = 1,
    identity: dict[str, str] | None = None,
    protocol: dict[str, object] | None = None,
) -> str:
    """An ISMRMRD XML header (via ``ismrmrd.xsd``) for a 2-D Cartesian scan.

    ``encoded`` = (x, y) encoded matrix (x may include readout oversampling),
    ``recon`` = (x, y) image matrix; FOV = matrix × voxel size. The phase-encode
    limits are 0 … y−1 with centre y//2 (all lines encodable).
    """
    import ismrmrd.xsd as x
    from xsdata.models.datatype import XmlDate, XmlTime

    identity, protocol = dict(identity or {}), dict(protocol or {})
    dr, dp, dz = voxel_size
    ex, ey = encoded
    rx, ry = recon

    def space(mx: int, my: int) -> x.encodingSpaceType:
        # FOV = matrix × voxel size (oversampled readout: more samples, same dr)
        return x.encodingSpaceType(
            matrixSize=x.matrixSizeType(x=mx, y=my, z=1),
            fieldOfView_mm=x.fieldOfViewMm(x=mx * dr, y=my * dp, z=dz),
        )

    limits = x.encodingLimitsType(
        kspace_encoding_step_1=x.limitType(minimum=0, maximum=ey - 1, center=ey // 2),
        slice=x.limitType(minimum=0, maximum=max(n_slices - 1, 0), center=0),
        repetition=x.limitType(minimum=0, maximum=max(n_repetitions - 1, 0), center=0),
    )
    enc = x.encodingType(
        encodedSpace=space(ex, ey),
        reconSpace=space(rx, ry),
        encodingLimits=limits,
        trajectory=x.trajectoryType.CARTESIAN,
    )
    field = float(protocol.get("systemFieldStrength_T", 3.0))
    hdr = x.ismrmrdHeader(
        experimentalConditions=x.experimentalConditionsType(
            H1resonanceFrequency_Hz=int(protocol.get("H1resonanceFrequency_Hz", round(42.577478e6 * field)))
        ),
        encoding=[enc],
    )
    hdr.acquisitionSystemInformation = x.acquisitionSystemInformationType(
        systemVendor=protocol.get("systemVendor"),
        systemModel=protocol.get("systemModel"),
        systemFieldStrength_T=field,
        institutionName=identity.get("InstitutionName"),
    )
    seq = {k: [float(protocol[k])] for k in ("TR", "TE", "TI", "flipAngle_deg") if k in protocol}
    if seq:
        hdr.sequenceParameters = x.sequenceParametersType(**seq)

    def date(key: str):
        v = identity.get(key)
        return XmlDate.from_string(f"{v[:4]}-{v[4:6]}-{v[6:8]}") if v and len(v) >= 8 else None

    if any(k in identity for k in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")):
        hdr.subjectInformation = x.subjectInformationType(
            patientName=identity.get("PatientName"),
            patientID=identity.get("PatientID"),
            patientBirthdate=date("PatientBirthDate"),
            patientGender=identity.get("PatientSex") if identity.get("PatientSex") in ("M", "F", "O") else None,
        )
    study_keys = ("StudyInstanceUID", "StudyID", "AccessionNumber", "StudyDate", "StudyTime",
                  "ReferringPhysicianName", "StudyDescription")
    if any(k in identity for k in study_keys):
        t = identity.get("StudyTime")
        acc = identity.get("AccessionNumber")
        hdr.studyInformation = x.studyInformationType(
            studyDate=date("StudyDate"),
            studyTime=XmlTime.from_string(f"{t[:2]}:{t[2:4]}:{t[4:6]}") if t and len(t) >= 6 else None,
            studyID=identity.get("StudyID"),
            accessionNumber=int(acc) if acc and acc.isdigit() else None,
            referringPhysicianName=identity.get("ReferringPhysicianName"),
            studyDescription=identity.get("StudyDescription"),
            studyInstanceUID=identity.get("StudyInstanceUID"),
        )
    hdr.measurementInformation = x.measurementInformationType(
        patientPosition=x.patientPositionType(str(protocol.get("patientPosition", "HFS"))),
        protocolName=protocol.get("protocolName"),
        seriesDescription=identity.get("SeriesDescription"),
        frameOfReferenceUID=identity.get("FrameOfReferenceUID"),
    )
    return x.ToXML(hdr)


# ----------------------------------------------------------------------------- maths


def noise_whitener(noise: np.ndarray) -> np.ndarray:
    """Whitening matrix ``W`` ``[C, C]`` from noise samples ``[C, M]``.

    Ψ = (1/M) Σ_m n_m n_mᴴ is the coil noise covariance; with its Cholesky
    factor Ψ = L Lᴴ, W = L⁻¹ gives cov(W n) = L⁻¹ Ψ L⁻ᴴ = I, so whitened coils
    ``W y`` have independent, unit-variance noise.
    """
    n = np.asarray(noise, dtype=np.complex128)  # [C, M]
    psi = n @ n.conj().T / max(n.shape[1], 1)  # [C, C]
    chol = np.linalg.cholesky(psi)  # [C, C] lower
    return np.linalg.inv(chol)  # [C, C]


def remove_readout_oversampling(
    path: str | Path, kspace: np.ndarray, mask: np.ndarray, h_out: int
) -> tuple[np.ndarray, np.ndarray]:
    """Crop the readout (H) field of view to ``h_out`` pixels.

    k ``[S, C, H, W]`` → ifft1c along H → centre crop to ``h_out`` → fft1c:
    the image of the result equals the centre rows of the image of ``k``.
    The mask ``[S, 1, H, W]`` becomes line-wise (a column is acquired when any
    of its samples is): exact for 1-D undersampling; for a partial echo (one
    contiguous run of samples per line) the missing echo part is left
    zero-filled. A scattered 2-D pattern (several runs in a column) cannot
    survive the readout crop and raises ``InputError``.
    """
    h = kspace.shape[-2]
    if h_out >= h:
        return kspace, mask
    lines = mask.max(axis=-2, keepdims=True)  # [S, 1, 1, W]
    edges = np.diff(mask, axis=-2, prepend=0, append=0)  # [S, 1, H+1, W]
    if ((edges > 0).sum(axis=-2) > 1).any():
        raise InputError(path, "2-D undersampling with readout oversampling is not supported")
    mask = np.broadcast_to(lines, mask.shape)
    img = ifft1c(torch.from_numpy(kspace), dim=-2)  # [S, C, H, W]
    top = (h - h_out) // 2
    k = fft1c(img[..., top : top + h_out, :], dim=-2).numpy()  # [S, C, h_out, W]
    return k.astype(np.complex64), np.ascontiguousarray(mask[..., :h_out, :])


# ----------------------------------------------------------------------------- reader


def find_ismrmrd_group(f: h5py.File) -> str | None:
    """Name of the group holding ``data`` + ``xml`` (``dataset`` first), or None."""
    for name in sorted(f.keys(), key=lambda n: n != "dataset"):
        obj = f[name]
        if isinstance(obj, h5py.Group) and "data" in obj and "xml" in obj:
            return name
    return None


def frame_names(keys: list[tuple[int, int, int, int]]) -> dict[tuple, str]:
    """Frame suffix per (repetition, contrast, phase, set): only varying counters."""
    labels = ("rep", "c", "ph", "set")
    varying = [len({k[i] for k in keys}) > 1 for i in range(4)]
    names = {}
    for k in keys:
        parts = [f"{labels[i]}{k[i]}" for i in (1, 2, 3, 0) if varying[i]]
        names[k] = "_".join(parts)
    return names


def _has_flag(head: np.ndarray, flag: int) -> np.ndarray:
    return (head["flags"].astype(np.uint64) & np.uint64(flag_bit(flag))) != 0


def _imaging(path: Path, head: np.ndarray) -> np.ndarray:
    """Which acquisitions are imaging lines (not noise, navigators, calibration…)."""
    skip = np.uint64(sum(flag_bit(b) for b in SKIPPED_FLAGS))
    keep = (head["flags"].astype(np.uint64) & skip) == 0
    if not keep.any():
        raise InputError(path, "ISMRMRD file has no imaging acquisitions (only noise/navigator lines)")
    return keep


def _frame_keys(idx: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Per-line (repetition, contrast, phase, set) ``[N, 4]`` and the sorted distinct keys."""
    frame_of = np.stack([idx["repetition"], idx["contrast"], idx["phase"], idx["set"]], axis=1).astype(np.int64)
    return frame_of, sorted({tuple(int(v) for v in k) for k in frame_of})


@contextmanager
def _ismrmrd_group(path: Path) -> Iterator[h5py.Group]:
    """The ISMRMRD group of an open file; HDF5 read failures become ``InputError``."""
    try:
        with h5py.File(path, "r") as f:
            group = find_ismrmrd_group(f)
            if group is None:
                raise InputError(path, "no ISMRMRD 'dataset/data' and 'dataset/xml' in this HDF5 file")
            yield f[group]
    except (OSError, KeyError, ValueError, IndexError, TypeError) as err:
        raise InputError(path, f"cannot read ISMRMRD data: {one_line(err)}") from None


def list_ismrmrd_frames(path: str | Path) -> list[str]:
    """Frame names of an ISMRMRD file from its acquisition headers only (no samples read)."""
    path = Path(path)
    with _ismrmrd_group(path) as group:
        head = group["data"].fields("head")[...]
    if head.size == 0:
        raise InputError(path, "ISMRMRD file has no acquisitions")
    _, keys = _frame_keys(head[_imaging(path, head)]["idx"])
    return [frame_names(keys)[k] for k in keys]


def read_ismrmrd(path: str | Path) -> list[Scan]:
    """Read a Cartesian 2-D ISMRMRD file: one ``Scan`` per frame (see module doc).

    Raises ``InputError`` for non-Cartesian or 3-D data, header/data mismatches,
    and unreadable content. Numeric validation (finite, non-zero) is done by
    :func:`mpcli.io.readers.read_scans`.
    """
    path = Path(path)
    with _ismrmrd_group(path) as group:
        xml = group["xml"][0]
        data = group["data"]
        check_fits(path, 3 * data.id.get_storage_size(), "the acquisitions")
        acqs = data[...]  # structured [N]: head, traj, data
    hdr = parse_header(path, xml)
    return _scans_from_acquisitions(path, hdr, acqs)


def _scans_from_acquisitions(path: Path, hdr, acqs: np.ndarray) -> list[Scan]:
    enc = hdr.encoding[0]
    traj = getattr(enc.trajectory, "value", str(enc.trajectory))
    if traj != "cartesian":
        raise InputError(path, f"non-Cartesian trajectory ({traj}) is not supported")
    if acqs.size == 0:
        raise InputError(path, "ISMRMRD file has no acquisitions")
    head = acqs["head"]
    is_noise = _has_flag(head, ACQ_IS_NOISE_MEASUREMENT)
    keep = _imaging(path, head)
    h = head[keep]
    if (h["trajectory_dimensions"] > 0).any():
        raise InputError(path, "non-Cartesian trajectory (acquisitions carry k-space coordinates) is not supported")
    em, rm = enc.encodedSpace.matrixSize, enc.reconSpace.matrixSize
    idx = h["idx"]
    if em.z > 1 and (idx["kspace_encode_step_2"] > 0).any():
        raise InputError(path, f"3-D acquisitions (encoded matrix z = {em.z}) are not supported")
    nc_all = h["active_channels"]
    if len(np.unique(nc_all)) != 1:
        raise InputError(path, "acquisitions differ in coil count; not supported")
    nc = int(nc_all[0])
    nx, ny = int(em.x), int(em.y)
    raw = acqs["data"][keep]
    lengths = np.fromiter((len(d) for d in raw), dtype=np.int64, count=len(raw))
    if (lengths != 2 * nc * h["number_of_samples"].astype(np.int64)).any():
        raise InputError(path, "header/data mismatch: acquisition data length is not 2 × coils × samples")

    # noise prewhitening (noise lines must have the same coil count)
    whitener = None
    noise_h = head[is_noise]
    if is_noise.any():
        noise = [d.view(np.complex64).reshape(int(nh["active_channels"]), -1)
                 for d, nh in zip(acqs["data"][is_noise], noise_h)]
        if all(n.shape[0] == nc for n in noise):
            noise = np.concatenate(noise, axis=1)  # [C, M]
            check_finite(path, noise, "noise scan")
            try:
                whitener = noise_whitener(noise)  # [C, C]
            except np.linalg.LinAlgError:
                raise InputError(path, "noise covariance is not positive definite") from None
            # noise sampled at another dwell time has another bandwidth: variance ∝ 1/dwell
            t_noise, t_data = float(noise_h["sample_time_us"][0]), float(h["sample_time_us"][0])
            if t_noise > 0 and t_data > 0:
                whitener = whitener * np.sqrt(t_data / t_noise)

    # bulk decode: one [G, C, ns] array per distinct (samples, centre, discard_pre, discard_post)
    layout = np.stack([h["number_of_samples"], h["center_sample"], h["discard_pre"], h["discard_post"]],
                      axis=1).astype(np.int64)
    groups = []
    for key in {tuple(int(v) for v in r) for r in layout}:
        ns, cs, pre, post = key
        gi = np.nonzero((layout == np.asarray(key)).all(axis=1))[0]
        data = np.stack(list(raw[gi])).view(np.complex64).reshape(len(gi), nc, ns)  # [G, C, ns]
        check_finite(path, data)
        if whitener is not None:
            data = np.einsum("dc,gcs->gds", whitener.astype(np.complex64), data)  # [G, C, ns]
        smp = np.arange(pre, ns - post)
        x = smp - cs + nx // 2 if cs > 0 else smp + (nx - ns) // 2
        ok = (x >= 0) & (x < nx)
        if not ok.any():
            raise InputError(path, f"header/data mismatch: readout samples fall outside the encoded matrix x = {nx}")
        groups.append((gi, data[:, :, smp[ok]], x[ok]))  # data [G, C, X]

    # phase-encode line → column
    lim = enc.encodingLimits.kspace_encoding_step_1 if enc.encodingLimits else None
    shift = (ny // 2 - int(lim.center)) if lim is not None and lim.maximum > 0 else 0
    ky = idx["kspace_encode_step_1"].astype(np.int64) + shift
    if (ky < 0).any() or (ky >= ny).any():
        raise InputError(path, f"header/data mismatch: phase-encode index outside the encoded matrix y = {ny}")
    slice_index, slc = np.unique(idx["slice"].astype(np.int64), return_inverse=True)  # acquired slices only
    n_slices = len(slice_index)
    frame_of, keys = _frame_keys(idx)
    names = frame_names(keys)
    check_fits(path, len(keys) * n_slices * nc * nx * ny * 8 * 4, f"k-space of {len(keys)} frame(s) × "
               f"{n_slices} slices × {nc} coils × {nx}×{ny}")
    geometry = _geometry(hdr, h, slc, n_slices)
    sha = file_sha256(path)
    rx, ry = int(rm.x), int(rm.y)
    scans = []
    for key in keys:
        sel = (frame_of == np.asarray(key)).all(axis=1)
        k = np.zeros((n_slices, nc, nx, ny), np.complex64)  # [S, C, H, W]
        count = np.zeros((n_slices, 1, nx, ny), np.float32)  # [S, 1, H, W]
        for gi, data, x in groups:
            use = sel[gi]
            if not use.any():
                continue
            li = gi[use]
            rows = (slc[li][:, None], slice(None), x[None, :], ky[li][:, None])
            np.add.at(k, rows, data[use].transpose(0, 2, 1))  # [G, X, C] (averages add up)
            np.add.at(count, rows, 1.0)
        acquired = count > 0
        k = np.where(acquired, k / np.maximum(count, 1), 0).astype(np.complex64)
        mask = (acquired & (np.abs(k).max(axis=1, keepdims=True) > 0)).astype(np.float32)  # [S, 1, H, W]
        k, mask = remove_readout_oversampling(path, k, mask, min(rx, nx) if rx > 0 else nx)
        k = k * mask
        h_out = k.shape[-2]
        scans.append(Scan(
            kspace=torch.from_numpy(np.ascontiguousarray(k, dtype=np.complex64)),
            mask=torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)),
            geometry=geometry,
            source=path,
            sha256=sha,
            format="ismrmrd",
            recon_size=(min(rx, h_out) if rx > 0 else h_out, min(ry, ny) if ry > 0 else ny),
            frame=names[key],
            identity=header_identity(hdr),
            protocol=header_protocol(hdr),
        ))
    return scans


def _geometry(hdr, h: np.ndarray, slc: np.ndarray, n_slices: int) -> Geometry:
    """Geometry from the first acquisition of each slice (default when absent)."""
    voxel = header_voxel_size(hdr)
    firsts = [int(np.nonzero(slc == s)[0][0]) if (slc == s).any() else None for s in range(n_slices)]
    if any(i is None for i in firsts):
        return Geometry.default(n_slices, voxel)
    read = np.asarray(h["read_dir"][firsts[0]], float)
    phase = np.asarray(h["phase_dir"][firsts[0]], float)
    if np.linalg.norm(read) < 1e-6 or np.linalg.norm(phase) < 1e-6:
        return Geometry.default(n_slices, voxel)
    read, phase = read / np.linalg.norm(read), phase / np.linalg.norm(phase)
    normal = np.asarray(h["slice_dir"][firsts[0]], float)
    if np.linalg.norm(normal) < 1e-6:
        normal = np.cross(read, phase)
    normal = normal / np.linalg.norm(normal)
    centres = tuple(tuple(float(v) for v in h["position"][i]) for i in firsts)

    def vec(v):
        return tuple(float(a) for a in v)

    return Geometry(voxel_size=voxel, read_dir=vec(read), phase_dir=vec(phase), slice_dir=vec(normal),
                    slice_centres=centres, assumed=False)


# ----------------------------------------------------------------------------- writer


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def mask_4d(mask, shape: tuple[int, int, int, int]) -> np.ndarray:
    """A mask ``[W]``, ``[H, W]``, ``[S, 1, H, W]`` (or None = full) as ``[S, 1, H, W]`` float32."""
    s, _, hh, w = shape
    if mask is None:
        return np.ones((s, 1, hh, w), np.float32)
    m = _as_numpy(mask).astype(np.float32)
    if m.ndim == 1:
        m = m[None, None, None, :]
    elif m.ndim == 2:
        m = m[None, None]
    return np.array(np.broadcast_to(m, (s, 1, hh, w)), dtype=np.float32)  # a writable copy


def oversample_readout(k: np.ndarray, factor: int) -> np.ndarray:
    """Readout-oversampled k-space ``[S, C, factor·H, W]``: image zero-padded along H."""
    if factor <= 1:
        return k
    hh = k.shape[-2]
    img = ifft1c(torch.from_numpy(k), dim=-2)  # [S, C, H, W]
    pad = torch.zeros((*k.shape[:-2], factor * hh, k.shape[-1]), dtype=img.dtype)
    top = (factor * hh - hh) // 2
    pad[..., top : top + hh, :] = img
    return fft1c(pad, dim=-2).numpy().astype(np.complex64)  # [S, C, factor·H, W]


def _write_acquisitions(path: Path, acqs: list) -> None:
    """Write ``dataset/data`` in one go: the rows ``ismrmrd.Dataset.append_acquisition``
    writes one at a time (same compound dtype: ``head``, ``traj``, ``data``)."""
    from ismrmrd.hdf5 import acquisition_dtype, acquisition_header_dtype

    rows = np.empty(len(acqs), dtype=acquisition_dtype)
    for i, acq in enumerate(acqs):
        acq.scan_counter = i
        rows["head"][i] = np.frombuffer(acq.getHead(), dtype=acquisition_header_dtype)[0]
        rows["data"][i] = acq.data.view(np.float32).reshape(-1)
        rows["traj"][i] = acq.traj.view(np.float32).reshape(-1)
    with h5py.File(path, "a") as f:
        f["dataset"].create_dataset("data", data=rows, maxshape=(None,), chunks=True)


def write_ismrmrd(
    path: str | Path,
    kspace,
    mask=None,
    geometry: Geometry | None = None,
    identity: dict[str, str] | None = None,
    protocol: dict[str, object] | None = None,
    noise=None,
    oversampling: int = 1,
    repetitions: list | None = None,
    sample_time_us: float = 5.0,
    noise_sample_time_us: float | None = None,
) -> Path:
    """Write a standard ISMRMRD file (``dataset/xml`` + ``dataset/data``).

    Args:
        kspace: ``[S, C, H, W]`` complex (numpy or torch): repetition 0.
        mask: ``[W]``, ``[H, W]`` or ``[S, 1, H, W]`` (or a list, one per
            repetition); only lines with an acquired sample are written,
            samples outside the mask are written as zeros.
        geometry: positions/directions per slice (``Geometry.default`` if None).
        noise: ``[C, M]`` noise samples, written first as one noise acquisition.
        oversampling: readout oversampling factor (2: data is padded in image
            space to 2H readout samples; reading back removes it).
        repetitions: further ``[S, C, H, W]`` k-spaces, written as repetitions 1…R.
    The file is written to a temporary name beside ``path`` and renamed.
    """
    import ismrmrd

    path = Path(path)
    frames = [_as_numpy(kspace).astype(np.complex64)] + [_as_numpy(r).astype(np.complex64) for r in (repetitions or [])]
    s, _, hh, w = frames[0].shape
    masks = mask if isinstance(mask, (list, tuple)) else [mask] * len(frames)
    geometry = geometry or Geometry.default(s)
    os_ = max(int(oversampling), 1)
    xml = make_header((os_ * hh, w), (hh, w), geometry.voxel_size, s, len(frames), identity, protocol)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        acqs = []
        if noise is not None:
            n = _as_numpy(noise).astype(np.complex64)  # [C, M]
            acq = ismrmrd.Acquisition.from_array(n)
            acq.set_flag(ACQ_IS_NOISE_MEASUREMENT)
            acq.sample_time_us = noise_sample_time_us or sample_time_us
            acqs.append(acq)
        for r, (k, m) in enumerate(zip(frames, masks)):
            m4 = mask_4d(m, k.shape)  # [S, 1, H, W]
            k = oversample_readout(k * m4, os_)  # [S, C, os·H, W]
            for sl in range(s):
                cols = np.nonzero(m4[sl, 0].max(axis=0) > 0)[0]
                for n_col, j in enumerate(cols):
                    acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(k[sl, :, :, j]))
                    acq.center_sample = os_ * hh // 2
                    acq.sample_time_us = sample_time_us
                    acq.idx.kspace_encode_step_1 = int(j)
                    acq.idx.slice = sl
                    acq.idx.repetition = r
                    if n_col == 0:
                        acq.set_flag(ACQ_FIRST_IN_SLICE)
                    if n_col == len(cols) - 1:
                        acq.set_flag(ACQ_LAST_IN_SLICE)
                    for name, vec in (("read_dir", geometry.read_dir), ("phase_dir", geometry.phase_dir),
                                      ("slice_dir", geometry.slice_dir), ("position", geometry.slice_centres[sl])):
                        field = getattr(acq, name)
                        for a in range(3):
                            field[a] = float(vec[a])
                    acqs.append(acq)
        if acqs:
            acqs[-1].set_flag(ACQ_LAST_IN_MEASUREMENT)
        with ismrmrd.Dataset(str(tmp), "dataset", mode="w") as dset:
            dset.write_xml_header(xml.encode())
        _write_acquisitions(tmp, acqs)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


__all__ = [
    "SKIPPED_FLAGS",
    "check_finite",
    "find_ismrmrd_group",
    "flag_bit",
    "frame_names",
    "header_identity",
    "header_protocol",
    "header_voxel_size",
    "make_header",
    "mask_4d",
    "noise_whitener",
    "one_line",
    "oversample_readout",
    "parse_header",
    "read_ismrmrd",
    "remove_readout_oversampling",
    "write_ismrmrd",
]
