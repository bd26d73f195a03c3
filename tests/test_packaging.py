"""Packaging metadata that setuptools accepts without deprecation warnings."""

import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_license_is_an_spdx_string_and_setuptools_supports_it():
    data = tomllib.loads(PYPROJECT.read_text())
    assert data["project"]["license"] == "BSD-3-Clause"  # a TOML table is deprecated since setuptools 77
    assert "setuptools>=77" in data["build-system"]["requires"]
