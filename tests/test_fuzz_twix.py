"""Property: whatever a twix file holds, reading it returns valid scans or raises ``InputError``.

Hypothesis mutates the real Siemens file: bytes of the multi-measurement header,
the protocol header and the data block headers, truncations, protocol values
(matrix, FOV, normal, trajectory, dimensions) and data block counters. For every
mutant ``read_scans`` must return validated scans or raise ``InputError`` (the
CLI's exit code 3 with one line), never another exception, and must finish
quickly (a corrupt length never makes the reader walk or allocate without bound).

``MP_FUZZ_EXAMPLES`` sets the number of mutants (40 by default; 400 ran clean
before this test was committed).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpcli.errors import InputError
from mpcli.io.readers import read_scans
from tests.twix_variants import REAL_TWIX, clone, image_lines, load, set_protocol, write

pytestmark = pytest.mark.skipif(not REAL_TWIX.exists(), reason=f"real twix file absent ({REAL_TWIX})")

DATA_START = 10240 + 786112  # multi-raid header + protocol header of the real file
BLOCK = 192 + 2 * (32 + 8 * 320)  # one VD/VE data block of the real file: scan header, 2 × (channel header + samples)
REGIONS = {"raid header": (0, 10240), "protocol header": (10240, 10240 + 256),
           "block headers": (DATA_START, DATA_START + 8 * BLOCK), "anywhere": (0, 1_657_344)}
PROTOCOL_KEYS = ("sKSpace.lBaseResolution", "sKSpace.lPhaseEncodingLines", "sKSpace.ucDimension",
                 "sKSpace.ucTrajectory", "sKSpace.dPhaseOversamplingForDialog", "sKSpace.ucPhasePartialFourier",
                 "sSliceArray.asSlice[0].dReadoutFOV", "sSliceArray.asSlice[0].dPhaseFOV",
                 "sSliceArray.asSlice[0].dThickness", "sSliceArray.asSlice[0].sNormal.dTra",
                 "sSliceArray.asSlice[0].sNormal.dCor", "sSliceArray.asSlice[0].sPosition.dSag",
                 "sSliceArray.asSlice[0].dInPlaneRot", "sSliceArray.lSize", "sFastImaging.lEPIFactor")
ODD = ("0", "-1", "nan", "inf", "1e9", "2000000000", "1", "3", "7.5", "1e-9", "abc", "")
COUNTERS = ("Lin", "Sli", "Par", "Rep", "Eco", "Ave", "Set")


@pytest.fixture(scope="module")
def base():
    return load()


def _mutant(data, base, d: Path) -> Path:
    kind = data.draw(st.sampled_from(["bytes", "truncate", "protocol", "counters"]))
    path = d / "m.dat"
    if kind in ("bytes", "truncate"):
        raw = bytearray(REAL_TWIX.read_bytes())
        if kind == "truncate":
            raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
        else:
            lo, hi = REGIONS[data.draw(st.sampled_from(sorted(REGIONS)))]
            for _ in range(data.draw(st.integers(1, 8))):
                raw[data.draw(st.integers(lo, hi - 1))] = data.draw(st.integers(0, 255))
        path.write_bytes(bytes(raw))
        return path
    if kind == "protocol":
        keys = data.draw(st.lists(st.sampled_from(PROTOCOL_KEYS), min_size=1, max_size=3, unique=True))
        meas = set_protocol(base, {k: data.draw(st.sampled_from(ODD)) for k in keys})
    else:
        meas = dict(base)
        lines = image_lines(base)
        changed = {}
        for i in data.draw(st.lists(st.integers(0, len(lines) - 1), min_size=1, max_size=4, unique=True)):
            name = data.draw(st.sampled_from(COUNTERS))
            changed[i] = clone(lines[i], **{name: data.draw(st.sampled_from([1, 2, 159, 160, 1000, 65535]))})
        meas["mdb"] = [changed.get(i, b) for i, b in enumerate(lines)]
    return write([meas], path)


@settings(max_examples=int(os.environ.get("MP_FUZZ_EXAMPLES", "40")), deadline=None, derandomize=not os.environ.get("MP_FUZZ_RANDOM"),
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_mutated_twix_file_reads_cleanly_or_is_an_input_error(base, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = _mutant(data, base, Path(tmp))
        t0 = time.perf_counter()
        try:
            scans = read_scans(path)
        except InputError as err:
            assert "\n" not in str(err) and str(err).startswith(str(path))
        else:
            assert scans and all(np.isfinite(s.kspace.numpy().view(np.float32)).all() for s in scans)
        assert time.perf_counter() - t0 < 30
