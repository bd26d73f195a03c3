"""DICOM output: one MR Image Storage series per volume, exact geometry, reproducible.

Geometry. Our voxel (i, j) of slice k (i along H = readout = image rows, j along
W = phase = image columns) sits at ``p = c_k + (i − H//2)·dr·read + (j − W//2)·dp·phase``
(LPS mm, see :mod:`mpcli.scan`). DICOM places pixel (row r, column c) at
``IPP + c·Δc·X + r·Δr·Y`` where X (first IOP triplet) is the direction *along a
row* (increasing column index) and Y the direction along a column. Hence, with
``Rows = H`` and ``Columns = W`` and the pixel array ``image[k]``::

    IOP          = [phase_dir, read_dir]
    PixelSpacing = [dr, dp]                      (row spacing, column spacing)
    IPP_k        = c_k − (H//2)·dr·read − (W//2)·dp·phase  = voxel_to_lps · (0, 0, k, 1)

Pixels. 16-bit unsigned, one scale for the whole volume. The reconstruction's
own values (arbitrary units, often below 1) are
``value = slope · stored + intercept``, recorded in the Real World Value
Mapping Sequence (intercept 0 for a non-negative magnitude). What a viewer
shows and windows are the integers themselves, as on a scanner's own MR
images (no Rescale attributes, which the MR Image IOD does not define); a
volume with negative values (never a magnitude) adds RescaleSlope 1 and
RescaleIntercept ``round(intercept / slope)``, so displayed values stay
proportional to the reconstruction's. A window in the reconstruction's units
would often be narrower than 1, which the standard's LINEAR VOI function
forbids (PS3.3 C.11.2.1.2).

Window. WindowCenter/WindowWidth span the volume's minimum to its 99.5th
percentile (one window for the whole series, so slices look alike while
scrolling): a viewer opens the series with the tissue in grey levels and
only the brightest 0.5 % of voxels white, not with a default window.

Reproducibility. UIDs come from :func:`pydicom.uid.generate_uid` with entropy
sources (input SHA-256, model SHA-256, version, method, pixel hash…), dates come
from the input's identity (never "now"), so a re-run is byte-identical.
Identifiers come only from ``identity``; unknown type-2 attributes are present
and empty; ``anonymize=True`` blanks them and derives new study UIDs.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from mpcli.errors import InputError
from mpcli.io.atomic import atomic_dir
from mpcli.scan import Geometry

MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")

# Identity keys (DICOM keywords) copied from ``identity`` unless anonymizing.
PATIENT_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
                "PatientSize", "PatientWeight")
STUDY_KEYS = ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
              "StudyDescription")
_TYPE2_EMPTY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")

# Protocol keys accepted (first match wins): DICOM keyword, then ISMRMRD-style aliases.
_PROTOCOL_ALIASES: dict[str, tuple[str, ...]] = {
    "RepetitionTime": ("RepetitionTime", "TR", "repetition_time", "tr"),
    "EchoTime": ("EchoTime", "TE", "echo_time", "te"),
    "InversionTime": ("InversionTime", "TI", "inversion_time", "ti"),
    "FlipAngle": ("FlipAngle", "flip_angle", "flipAngle_deg", "flip_angle_deg"),
    "EchoTrainLength": ("EchoTrainLength", "echo_train_length", "etl"),
    "MagneticFieldStrength": ("MagneticFieldStrength", "field_strength", "systemFieldStrength_T",
                              "field_strength_T"),
    "ImagingFrequency": ("ImagingFrequency",),  # MHz; ISMRMRD H1resonanceFrequency_Hz is converted
    "SequenceName": ("SequenceName", "sequence", "sequence_type", "sequence_name"),
    "ScanningSequence": ("ScanningSequence",),
    "SequenceVariant": ("SequenceVariant",),
    "PatientPosition": ("PatientPosition", "patient_position", "patientPosition"),
    "BodyPartExamined": ("BodyPartExamined", "body_part"),
    "ProtocolName": ("ProtocolName", "protocolName", "acquisition"),
}
_PATIENT_POSITIONS = {"HFP", "HFS", "HFDR", "HFDL", "FFDR", "FFDL", "FFP", "FFS", "LFP", "LFS",
                      "RFP", "RFS", "AFDR", "AFDL", "PFDR", "PFDL"}
_MAX_LEN = {"LO": 64, "SH": 16, "PN": 64, "CS": 16, "DS": 16, "IS": 12, "ST": 1024, "LT": 10240}


# --------------------------------------------------------------------------- values


def _first(v):
    """First element of a list/tuple/array value, else the value itself."""
    if isinstance(v, (list, tuple, np.ndarray)):
        return v[0] if len(v) else None
    return v


def _date(v) -> str:
    """DICOM DA ``YYYYMMDD`` from ``YYYYMMDD`` / ``YYYY-MM-DD`` / ``YYYY.MM.DD``; "" if invalid."""
    s = re.sub(r"[-./]", "", str(v or "").strip())[:8]
    return s if re.fullmatch(r"(19|20)\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])", s) else ""


def _time(v) -> str:
    """DICOM TM ``HHMMSS[.ffffff]`` from ``HH:MM:SS`` or ``HHMMSS``; "" if invalid."""
    s = str(v or "").strip().replace(":", "")
    return s if re.fullmatch(r"([01]\d|2[0-3])([0-5]\d([0-5]\d(\.\d{1,6})?)?)?", s) else ""


def _text(keyword: str, v) -> str:
    """A string value made safe for the keyword's VR ("" when it cannot be)."""
    if v is None:
        return ""
    vr = pydicom.datadict.dictionary_VR(keyword)
    if vr == "DA":
        return _date(v)
    if vr == "TM":
        return _time(v)
    s = str(_first(v)).replace("\\", " ").strip()
    if vr in ("LO", "SH", "PN", "ST", "LT"):
        s = "".join(ch for ch in s if ch.isprintable())
    if vr == "CS":
        s = s.upper()
        if not re.fullmatch(r"[A-Z0-9 _]*", s):
            return ""
    if vr == "AS" and not re.fullmatch(r"\d{3}[DWMY]", s):
        return ""
    if vr == "DS":
        try:
            return format_number_as_ds(float(s))
        except (TypeError, ValueError):
            return ""
    if vr == "UI":
        return s if UID(s).is_valid else ""
    limit = _MAX_LEN.get(vr)
    if limit is not None and len(s) > limit:
        # free text may be shortened; an identifier that does not fit is dropped, never truncated
        return s[:limit].rstrip() if keyword.endswith("Description") else ""
    return s


def _ds(x: float) -> str:
    return format_number_as_ds(float(x))


def _protocol_value(protocol: dict, keyword: str):
    for alias in _PROTOCOL_ALIASES.get(keyword, (keyword,)):
        v = _first(protocol.get(alias))
        if v is not None and v != "":
            return v
    return None


def _scanning_sequence(protocol: dict) -> str:
    """ScanningSequence (SE/IR/GR/EP/RM) from the protocol; RM (research mode) when unknown."""
    explicit = _text("ScanningSequence", _protocol_value(protocol, "ScanningSequence"))
    if explicit in ("SE", "IR", "GR", "EP", "RM"):
        return explicit
    seq = str(_protocol_value(protocol, "SequenceName") or "").lower()
    tokens = set(re.split(r"[^a-z0-9]+", seq))
    for words, code in ((("epi", "echoplanar", "echo planar"), "EP"),
                        (("inversion", "flair", "stir", "mprage"), "IR"),
                        (("gradient", "gre", "flash", "spgr", "fisp", "ssfp"), "GR"),
                        (("spin", "spinecho", "tse", "fse", "turbo"), "SE")):
        if any(w in seq for w in words if len(w) > 3) or tokens & set(words):
            return code
    if "se" in tokens:
        return "SE"
    return "RM"


# --------------------------------------------------------------------------- pixels


def quantize(volume: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Map a float volume to uint16 with one (slope, intercept) for the whole volume.

    ``value ≈ slope · stored + intercept``, stored ∈ [0, 65535]; intercept is 0
    when the volume is non-negative (a magnitude), else its minimum. The slope
    is the value that is written (a DS string, parsed back), so the rescale
    read from the file is exactly the one used here.

    Returns: stored ``[S, H, W]`` uint16, slope, intercept.
    """
    vol = np.nan_to_num(volume.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)  # [S, H, W]
    lo = min(float(vol.min()), 0.0)
    intercept = float(_ds(lo))
    span = float(vol.max()) - intercept
    slope = float(_ds(span / 65535.0)) if span > 0 else 1.0
    if slope > 0 and span / slope > 65535:  # DS rounding went down: round the slope up
        slope = float(_ds(slope * (1 + 1e-9)))
    stored = np.clip(np.rint((vol - intercept) / slope), 0, 65535).astype(np.uint16)  # [S, H, W]
    return stored, slope, intercept


def rescale_intercept(slope: float, intercept: float) -> int:
    """The integer RescaleIntercept: displayed value = stored + it ≈ value / slope."""
    return round(intercept / slope) if slope > 0 else 0


def display_window(stored: np.ndarray, offset: int, percentile: float = 99.5) -> tuple[float, float]:
    """(WindowCenter, WindowWidth) in displayed units mapping [min, p-th percentile] to black → white.

    With the LINEAR VOI function (PS3.3 C.11.2.1.2.1) a window (c, w) maps
    ``c − 0.5 − (w − 1)/2`` to black and ``c − 0.5 + (w − 1)/2`` to white, so
    ``w = hi − lo + 1`` and ``c = lo + w/2`` put black at ``lo`` and white at
    ``hi``; ``w ≥ 1`` as the standard requires.
    """
    shown = stored.astype(np.float64) + offset  # [S, H, W] displayed values
    lo = float(shown.min())
    hi = float(np.percentile(shown, percentile))
    if hi <= lo:
        hi = float(shown.max())
    width = max(hi - lo, 0.0) + 1.0
    return lo + width / 2, width


# --------------------------------------------------------------------------- datasets


def _uid(*parts) -> UID:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _real_world_mapping(slope: float, intercept: float) -> Sequence:
    item = Dataset()
    item.add_new("RealWorldValueFirstValueMapped", "US", 0)
    item.add_new("RealWorldValueLastValueMapped", "US", 65535)
    item.RealWorldValueIntercept = intercept
    item.RealWorldValueSlope = slope
    item.LUTExplanation = "mp reconstruction magnitude"
    item.LUTLabel = "MP_MAGNITUDE"
    unit = Dataset()
    unit.CodeValue = "[arb'U]"
    unit.CodingSchemeDesignator = "UCUM"
    unit.CodeMeaning = "arbitrary unit"
    item.MeasurementUnitsCodeSequence = Sequence([unit])
    return Sequence([item])


def _series_template(*, geometry: Geometry, identity: dict, protocol: dict, provenance: dict,
                     anonymize: bool, series_description: str | None, series_number: int | None,
                     series_uid: UID, study_uid: UID, for_uid: UID,
                     slope: float, intercept: float, window: tuple[float, float],
                     shape: tuple[int, int]) -> Dataset:
    """Everything shared by the slices of one series (all IOD modules but per-slice ones)."""
    method = str(provenance.get("method") or "unknown")
    version = str(provenance.get("version") or "unknown")
    model = provenance.get("model_sha256") or ""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, for names with accents
    # SOP Common
    ds.SOPClassUID = MR_IMAGE_STORAGE
    # Patient (type 2 present, empty when unknown) and General Study
    ident = {} if anonymize else identity
    for key in PATIENT_KEYS + STUDY_KEYS:
        v = _text(key, ident.get(key))
        if v or key in _TYPE2_EMPTY:
            setattr(ds, key, v)
    if anonymize:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "mp: identifiers blanked, study UIDs regenerated"
    ds.StudyInstanceUID = study_uid
    # General Series
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    number = _text("SeriesNumber", ident.get("SeriesNumber"))
    ds.SeriesNumber = series_number if series_number is not None else 1000 + (int(number) if number else 0)
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    if series_description is None:
        original = _text("SeriesDescription", ident.get("SeriesDescription"))
        series_description = f"mp {method}" + (f" ({original})" if original else "")
    ds.SeriesDescription = _text("SeriesDescription", series_description)
    protocol_name = "" if anonymize else _text("ProtocolName", _protocol_value(protocol, "ProtocolName"))
    if protocol_name:
        ds.ProtocolName = protocol_name
    ds.Laterality = ""  # type 2C: paired body part unknown
    pos = _text("PatientPosition", _protocol_value(protocol, "PatientPosition"))
    ds.PatientPosition = pos if pos in _PATIENT_POSITIONS else ""
    body = _text("BodyPartExamined", _protocol_value(protocol, "BodyPartExamined"))
    if body:
        ds.BodyPartExamined = body
    # Frame of Reference
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    # General Equipment: the equipment that made these instances is mp
    ds.Manufacturer = "mpcli"
    ds.ManufacturerModelName = "mp"
    # the 64-character hash is not last: an odd total gets a pad space on the last value
    ds.SoftwareVersions = [v for v in (_text("SoftwareVersions", f"mp {version}"),
                                       _text("SoftwareVersions", model),
                                       _text("SoftwareVersions", method)) if v]
    # General Image / General Acquisition
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]  # MR requires a value 3
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.AcquisitionDate = ds.StudyDate
    ds.AcquisitionTime = ds.StudyTime
    ds.DerivationDescription = _text(
        "DerivationDescription",
        f"Reconstructed by mp {version}, method {method}, from raw k-space "
        f"sha256 {provenance.get('input_sha256') or 'unknown'}; model sha256 {model or 'none'}")
    ds.BurnedInAnnotation = "NO"
    if geometry.assumed or provenance.get("geometry_assumed"):
        ds.ImageComments = "Geometry assumed: the input file carried no position or orientation"
    ds.RealWorldValueMappingSequence = _real_world_mapping(slope, intercept)
    # Image Plane (shared part)
    dr, dp, thick = geometry.voxel_size
    ds.PixelSpacing = [_ds(dr), _ds(dp)]
    ds.ImageOrientationPatient = [_ds(v) for v in (*geometry.phase_dir, *geometry.read_dir)]
    ds.SliceThickness = _ds(thick)
    if len(geometry.slice_centres) > 1:
        ds.SpacingBetweenSlices = _ds(geometry.slice_spacing)
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    offset = rescale_intercept(slope, intercept)
    if offset:  # signed values only: the MR Image IOD has no Modality LUT, so not for a magnitude
        ds.RescaleIntercept = _ds(offset)
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"  # unspecified units (the real-world mapping names them)
    ds.WindowCenter, ds.WindowWidth = (_ds(v) for v in window)
    ds.WindowCenterWidthExplanation = "MP MIN TO P99.5"
    ds.VOILUTFunction = "LINEAR"
    # MR Image
    scanning = _scanning_sequence(protocol)
    ds.ScanningSequence = scanning
    seq_variant = _text("SequenceVariant", _protocol_value(protocol, "SequenceVariant"))
    ds.SequenceVariant = seq_variant or "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    for key in ("RepetitionTime", "EchoTime", "EchoTrainLength"):
        setattr(ds, key, _text(key, _protocol_value(protocol, key)))
    if scanning == "IR" or _protocol_value(protocol, "InversionTime") is not None:
        ds.InversionTime = _text("InversionTime", _protocol_value(protocol, "InversionTime"))
    if protocol.get("H1resonanceFrequency_Hz") and not protocol.get("ImagingFrequency"):
        protocol = {**protocol, "ImagingFrequency": float(_first(protocol["H1resonanceFrequency_Hz"])) / 1e6}
    for key in ("FlipAngle", "MagneticFieldStrength", "ImagingFrequency"):
        v = _text(key, _protocol_value(protocol, key))
        if v:
            setattr(ds, key, v)
    name = _text("SequenceName", _protocol_value(protocol, "SequenceName"))
    if name:
        ds.SequenceName = name
    ds.ImagedNucleus = "1H"
    return ds


def _file_meta(sop_uid: UID, version: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _uid("mpcli implementation class", version)
    meta.ImplementationVersionName = _text("ImplementationVersionName", f"MP_{version}")[:16]
    validate_file_meta(meta, enforce_standard=True)
    return meta


def write_dicom_series(out_dir: str | Path, image, geometry: Geometry, *, identity: dict[str, str],
                       protocol: dict, provenance: dict, anonymize: bool = False,
                       series_description: str | None = None, series_number: int | None = None,
                       overwrite: bool = True) -> list[Path]:
    """Write a magnitude volume ``[S, H, W]`` as one MR Image Storage series (one file per slice).

    Args:
        out_dir: the series folder to create (``IM0001.dcm`` …), written
            atomically as a whole (all slices or nothing).
        image: ``[S, H, W]`` real (magnitude) image, numpy or torch.
        geometry: LPS geometry with one slice centre per slice.
        identity: DICOM keyword → value (PatientName, PatientID,
            PatientBirthDate, PatientSex, StudyInstanceUID, StudyDate, StudyTime,
            StudyID, AccessionNumber, FrameOfReferenceUID, …). Never invented.
        protocol: acquisition facts (DICOM keywords or ISMRMRD-style aliases:
            TR/TE/TI in ms, flip angle, field strength, sequence name…).
        provenance: ``method``, ``model_sha256`` (or None), ``input_sha256``, ``version``.
        anonymize: blank patient/study identifiers and derive new study and
            frame-of-reference UIDs.
        series_description: SeriesDescription (default ``"mp {method}"``).
        series_number: SeriesNumber (default 1000 + the input's, or 1000).
        overwrite: replace an existing ``out_dir`` (safely, see :func:`atomic_dir`);
            when False an existing ``out_dir`` raises :class:`OutputError`. The
            overwrite *policy* belongs to the caller (the batch runner).

    Returns: the slice files, in slice order (``InstanceNumber`` k + 1).

    Raises: :class:`OutputError` when ``out_dir`` exists (without
    ``overwrite``) or cannot be written; ``ValueError`` for a bad image/geometry.
    """
    out_dir = Path(out_dir)
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    vol = np.asarray(image)
    if np.iscomplexobj(vol) or vol.ndim != 3:
        raise ValueError(f"expected a real image [S, H, W], got {vol.dtype} {vol.shape}")
    vol = vol.astype(np.float32, copy=False)  # [S, H, W]
    n_slices, h, w = vol.shape
    if len(geometry.slice_centres) != n_slices:
        raise ValueError(f"geometry has {len(geometry.slice_centres)} slice centres for {n_slices} slices")

    stored, slope, intercept = quantize(vol)  # [S, H, W] uint16
    method = str(provenance.get("method") or "unknown")
    version = str(provenance.get("version") or "unknown")
    input_sha = str(provenance.get("input_sha256") or "")
    model_sha = str(provenance.get("model_sha256") or "")
    content = hashlib.sha256(stored.tobytes() + repr((slope, intercept, geometry)).encode()).hexdigest()

    given_study = "" if anonymize else _text("StudyInstanceUID", identity.get("StudyInstanceUID"))
    given_for = "" if anonymize else _text("FrameOfReferenceUID", identity.get("FrameOfReferenceUID"))
    tag = "anonymized" if anonymize else "original"
    # study and frame of reference depend on the input only: every mp output of
    # one scan lands in one study and shares its patient coordinate frame
    study_uid = UID(given_study) if given_study else _uid(input_sha, tag, "study")
    for_uid = UID(given_for) if given_for else _uid(input_sha, tag, "frame of reference")
    frame = str(provenance.get("frame") or "")
    series_uid = _uid(input_sha, model_sha, version, method, frame, tag, series_description or "", content,
                      "series")

    template = _series_template(
        geometry=geometry, identity=identity, protocol=protocol, provenance=provenance,
        anonymize=anonymize, series_description=series_description, series_number=series_number,
        series_uid=series_uid, study_uid=study_uid, for_uid=for_uid, slope=slope,
        intercept=intercept, window=display_window(stored, rescale_intercept(slope, intercept)), shape=(h, w))

    aff = geometry.voxel_to_lps((h, w))  # [4, 4] (i, j, k) -> LPS mm
    normal = np.cross(np.asarray(geometry.phase_dir, float), np.asarray(geometry.read_dir, float))
    names = [f"IM{k + 1:04d}.dcm" for k in range(n_slices)]
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for k in range(n_slices):
            ds = Dataset()
            ds.update(template)
            sop_uid = _uid(series_uid, k, "instance")
            ds.SOPInstanceUID = sop_uid
            ds.InstanceNumber = k + 1
            # exact per-slice corner: c_k minus the in-plane offset of the FFT-centre pixel
            ipp = np.asarray(geometry.slice_centres[k], float) - aff[:3, 0] * (h // 2) - aff[:3, 1] * (w // 2)
            ds.ImagePositionPatient = [_ds(v) for v in ipp]
            ds.SliceLocation = _ds(float(ipp @ normal))
            ds.PixelData = np.ascontiguousarray(stored[k]).astype("<u2").tobytes()  # [H, W]
            ds["PixelData"].VR = "OW"
            ds.file_meta = _file_meta(sop_uid, version)
            ds.save_as(tmp / names[k], enforce_file_format=True)
    return [out_dir / n for n in names]


def read_dicom_series(directory: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a series written by :func:`write_dicom_series` (for tests and checks).

    Returns:
        image ``[S, H, W]`` float32 in the reconstruction's units (the Real
        World Value Mapping applied; Rescale when there is none), slices in
        ``InstanceNumber`` order, and the 4×4 affine from ``(i, j, k)`` (i = row,
        j = column, k = slice) to LPS mm (equal to ``Geometry.voxel_to_lps``).
    """
    files = sorted(Path(directory).glob("*.dcm"))
    if not files:
        raise InputError(directory, "no .dcm files")
    try:
        dss = sorted((pydicom.dcmread(f) for f in files), key=lambda d: int(d.InstanceNumber))
    except Exception as e:
        raise InputError(directory, f"unreadable DICOM ({e})") from e
    def real(d) -> np.ndarray:  # [H, W]
        if "RealWorldValueMappingSequence" in d:
            m = d.RealWorldValueMappingSequence[0]
            return d.pixel_array.astype(np.float64) * float(m.RealWorldValueSlope) + float(m.RealWorldValueIntercept)
        return d.pixel_array.astype(np.float64) * float(d.RescaleSlope) + float(d.RescaleIntercept)

    vol = np.stack([real(d) for d in dss])  # [S, H, W]
    iop = np.asarray(dss[0].ImageOrientationPatient, float)
    row_sp, col_sp = (float(v) for v in dss[0].PixelSpacing)
    ipp = np.asarray([d.ImagePositionPatient for d in dss], float)  # [S, 3]
    aff = np.eye(4)
    aff[:3, 0] = iop[3:] * row_sp  # i: down a column (increasing row index)
    aff[:3, 1] = iop[:3] * col_sp  # j: along a row (increasing column index)
    if len(dss) > 1:
        aff[:3, 2] = (ipp[-1] - ipp[0]) / (len(dss) - 1)
    else:
        aff[:3, 2] = np.cross(iop[:3], iop[3:]) * float(dss[0].SliceThickness)
    aff[:3, 3] = ipp[0]
    return vol.astype(np.float32), aff
