"""Variants of the real Siemens twix file, written with twixtools' own writer.

``../shared/data/real/siemens_gre_2ch.dat`` (MIT, pehses/twixtools
``example_data/gre.dat``) is one fully sampled 2-D GRE slice: 2 coils, 160 lines
of 320 samples (2× readout oversampling). The builders below change its
protocol text (ASCCONV lines of the ``MeasYaps`` buffer) and its data blocks
(counters, flags, samples) and write a new file with ``twixtools.write_twix``,
so every variant is a genuine VD/VE twix file rather than hand-made bytes.
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
import struct
import tempfile
from pathlib import Path

import numpy as np

REAL_TWIX = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "siemens_gre_2ch.dat"
_BUFFER = re.compile(rb"(\w{4,})\x00(.{4})", re.DOTALL)


def load(path: Path = REAL_TWIX) -> dict:
    """The file's last measurement as twixtools' dict, data blocks converted to editable local copies."""
    import twixtools

    with contextlib.redirect_stdout(io.StringIO()):
        meas = twixtools.read_twix(str(path), verbose=False, parse_pmu=False, parse_geometry=False)[-1]
    meas["mdb"] = [m.convert_to_local() for m in meas["mdb"] if not m.is_flag_set("SYNCDATA")]
    return meas


def write(measurements: list[dict], path: Path) -> Path:
    """Write measurements (noise first, imaging last) as one VD/VE twix file."""
    import twixtools

    with contextlib.redirect_stdout(io.StringIO()):
        twixtools.write_twix(measurements, str(path))
    return path


def _buffers(hdr_str: np.ndarray) -> list[tuple[bytes, bytes]]:
    raw = hdr_str.tobytes()
    _, n_buf = struct.unpack_from("<II", raw)
    pos, out = 8, []
    for _ in range(n_buf):
        m = _BUFFER.match(raw, pos)
        length = struct.unpack("<I", m.group(2))[0]
        start = m.end()
        out.append((m.group(1), raw[start : start + length]))
        pos = start + length
    return out


def set_protocol(meas: dict, values: dict[str, object]) -> dict:
    """Set ASCCONV entries (``"sKSpace.ucTrajectory": 2``…) in the ``MeasYaps`` buffer.

    Existing lines are replaced, new ones added before ``### ASCCONV END ###``;
    the header is rebuilt (buffer lengths, header size) and re-parsed.
    """
    from twixtools import twixprot

    meas = dict(meas)
    bufs = _buffers(meas["hdr_str"])
    out = []
    for name, body in bufs:
        if name == b"MeasYaps":
            text = body.decode("latin1")
            for key, value in values.items():
                line = f"{key}\t = \t{value}"
                pattern = re.compile(rf"^{re.escape(key)}\s*=.*$", re.MULTILINE)
                if pattern.search(text):
                    text = pattern.sub(line.replace("\\", "\\\\"), text)
                else:
                    text = text.replace("### ASCCONV END ###", f"{line}\n### ASCCONV END ###", 1)
            body = text.encode("latin1")
        out.append((name, body))
    payload = b"".join(name + b"\x00" + struct.pack("<I", len(body)) + body for name, body in out)
    size = 8 + len(payload)
    size += (-size) % 32
    raw = struct.pack("<II", size, len(out)) + payload
    raw += b"\x00" * (size - len(raw))
    meas["hdr_str"] = np.frombuffer(raw, dtype="<S1").copy()
    with tempfile.TemporaryFile() as f:  # twixprot reads with numpy.fromfile: a real file
        f.write(raw)
        f.seek(0)
        meas["hdr"] = twixprot.parse_twix_hdr(f)
    return meas


def clone(mdb, *, data=None, flags: dict[str, bool] | None = None, **counters):
    """A copy of a local data block with new samples, flags or counters (``Lin=3, Sli=1``…)."""
    out = copy.deepcopy(mdb)
    if data is not None:
        out.data = np.asarray(data, np.complex64)
    for name, on in (flags or {}).items():
        out.set_flag(name, on)
    for name, value in counters.items():
        setattr(out.mdh.Counter, name, int(value))
    return out


def image_lines(meas: dict) -> list:
    return [m for m in meas["mdb"] if m.is_image_scan()]


def raw_kspace(path: Path = REAL_TWIX) -> np.ndarray:
    """``[C, samples, lines]`` complex64 of the real file, read directly with twixtools (``map_twix``)."""
    import twixtools

    with contextlib.redirect_stdout(io.StringIO()):
        arr = twixtools.map_twix(str(path), verbose=False)[-1]["image"]
        arr.flags["squeeze_singletons"] = True
        k = arr[:]  # [Lin, Cha, Col]
    return np.ascontiguousarray(k.transpose(1, 2, 0))


def write_vb(meas: dict, path: Path) -> Path:
    """Write one measurement as a VB (syngo MR B17) twix file: protocol header, then for each
    readout and channel a ``twixtools.mdh_def.VB17_header`` followed by the samples.

    (``twixtools.write_twix`` writes VD/VE only; its VB branch is unfinished.) The
    VB headers are filled from the VD/VE ones, field by field, with twixtools' structs.
    """
    from twixtools import mdh_def

    def vb_header(mdh) -> mdh_def.VB17_header:
        out = mdh_def.VB17_header()
        for name, _ in mdh_def.VB17_header._fields_:
            if name not in ("FlagsAndDMALength", "IceProgramPara", "FreePara", "ChannelId", "PTABPosNeg"):
                setattr(out, name, getattr(mdh, name))
        return out

    with open(path, "xb") as f:
        f.write(meas["hdr_str"].tobytes())
        for m in meas["mdb"]:
            head = vb_header(m.mdh)
            data = np.atleast_2d(np.asarray(m.data, np.complex64))  # [C, samples]
            for c in range(data.shape[0]):
                head.ChannelId = c
                f.write(bytes(head))
                f.write(data[c].tobytes())
        end = mdh_def.VB17_header()
        mdh_def.add_flag(end, "ACQEND")
        f.write(bytes(end))
        f.write(b"\x00" * 128)
    return path
