"""Every broken input is an ``InputError`` naming the file, on one line, with its own reason."""

from __future__ import annotations

import pytest

from mpcli.errors import EXIT_INPUT, InputError
from mpcli.io.readers import is_kspace_file, read_scans
from mpcli.scan import file_sha256
from tests.synthetic import bad_input_corpus

# name → a fragment the one-line reason must contain (each failure says what it is)
EXPECTED = {
    "truncated": "truncated or corrupt",
    "empty": "empty file",
    "not_hdf5": "not an HDF5 file",
    "wrong_keys": "no fastMRI 'kspace'",
    "wrong_rank": "rank 2",
    "single_coil": "single-coil fastMRI is not supported",
    "nan": "NaN",
    "inf": "Inf",
    "all_zero": "all zero",
    "header_mismatch": "header/data mismatch",
    "non_cartesian": "non-Cartesian trajectory (radial) is not supported",
    "ismrmrd_all_zero": "all zero",
    "ismrmrd_nan": "NaN",
    "ismrmrd_mismatch": "header/data mismatch",
    "three_d": "3-D acquisitions",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return bad_input_corpus(tmp_path_factory.mktemp("bad"))


def test_corpus_covers_every_failure(corpus):
    assert set(corpus) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_input_is_one_line_input_error(corpus, name):
    path = corpus[name]
    before = file_sha256(path)
    with pytest.raises(InputError) as info:
        read_scans(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ")
    assert "\n" not in msg
    assert EXPECTED[name] in msg
    assert info.value.exit_code == EXIT_INPUT
    assert file_sha256(path) == before  # never modified, even when broken


@pytest.mark.parametrize("name", ["truncated", "empty", "not_hdf5", "wrong_keys"])
def test_is_kspace_file_rejects_unreadable(corpus, name):
    assert not is_kspace_file(corpus[name])


def test_missing_file_is_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_scans(tmp_path / "absent.h5")
