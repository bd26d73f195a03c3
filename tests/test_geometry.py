"""Geometry properties: ``Geometry`` affines, and the DICOM/NIfTI writers agreeing with them."""

from __future__ import annotations

import numpy as np
import pytest

from mpcli.io.dicom import read_dicom_series, write_dicom_series
from mpcli.io.nifti import read_nifti, write_nifti
from mpcli.scan import Geometry, center_crop
from tests.synthetic import DIRECTIONS

PROVENANCE = {"method": "zero-filled", "model_sha256": None, "input_sha256": "0" * 64, "version": "0.1.0"}




def make_geometry(kind: str, descending: bool, n: int = 4, voxel=(0.7, 0.9, 3.0), spacing: float = 3.5,
                  centre=(10.0, -20.0, 30.0)) -> Geometry:
    """A stack of ``n`` slices with a gap (spacing > thickness), in either slice order."""
    read, phase = DIRECTIONS[kind]
    normal = np.cross(read, phase)
    centres = [tuple(float(v) for v in np.asarray(centre) + (k - (n - 1) / 2) * spacing * normal)
               for k in range(n)]
    if descending:
        centres.reverse()
    return Geometry(voxel_size=voxel, read_dir=read, phase_dir=phase,
                    slice_dir=tuple(float(v) for v in normal), slice_centres=tuple(centres))


CASES = [(kind, desc) for kind in DIRECTIONS for desc in (False, True)]


@pytest.mark.parametrize("kind,descending", CASES)
@pytest.mark.parametrize("shape", [(24, 20), (23, 19)])
def test_voxel_to_lps_maps_fft_centre_to_slice_centre(kind, descending, shape):
    g = make_geometry(kind, descending)
    aff = g.voxel_to_lps(shape)
    h, w = shape
    for k, c in enumerate(g.slice_centres):
        np.testing.assert_allclose((aff @ [h // 2, w // 2, k, 1])[:3], c, atol=1e-9)
    dr, dp, _ = g.voxel_size
    np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), [dr, dp, g.slice_spacing], atol=1e-9)


def test_voxel_to_ras_flips_x_and_y():
    g = make_geometry("oblique", False)
    lps, ras = g.voxel_to_lps((24, 20)), g.voxel_to_ras((24, 20))
    np.testing.assert_allclose(ras[:2], -lps[:2])
    np.testing.assert_allclose(ras[2:], lps[2:])


def _crop_keeps_positions(full, crop):
    g = make_geometry("oblique", False, n=1)
    idx = np.arange(full[0] * full[1]).reshape(full)
    kept = center_crop(idx, crop)
    a_full, a_crop = g.voxel_to_lps(full), g.cropped(full, crop).voxel_to_lps(crop)
    for i, j in [(0, 0), (crop[0] - 1, crop[1] - 1), (crop[0] // 2, 0)]:
        fi, fj = divmod(int(kept[i, j]), full[1])
        np.testing.assert_allclose(a_crop @ [i, j, 0, 1], a_full @ [fi, fj, 0, 1], atol=1e-9)


@pytest.mark.parametrize("full,crop", [((24, 20), (16, 12)), ((23, 19), (15, 11)), ((23, 19), (16, 12))])
def test_cropped_geometry_keeps_world_positions(full, crop):
    _crop_keeps_positions(full, crop)


@pytest.mark.parametrize("full,crop", [((24, 20), (15, 11))])
def test_cropped_geometry_keeps_world_positions_even_to_odd(full, crop):
    _crop_keeps_positions(full, crop)


@pytest.mark.parametrize("kind,descending", CASES)
def test_dicom_and_nifti_affines_match_geometry(kind, descending, tmp_path):
    g = make_geometry(kind, descending)
    image = np.random.default_rng(0).random((4, 24, 20), dtype=np.float32)
    write_dicom_series(tmp_path / "dcm", image, g, identity={}, protocol={}, provenance=PROVENANCE)
    write_nifti(tmp_path / "x.nii", image, g)
    _, lps = read_dicom_series(tmp_path / "dcm")
    _, ras = read_nifti(tmp_path / "x.nii")
    np.testing.assert_allclose(lps, g.voxel_to_lps((24, 20)), atol=1e-6)
    np.testing.assert_allclose(ras, g.voxel_to_ras((24, 20)), atol=1e-5)
