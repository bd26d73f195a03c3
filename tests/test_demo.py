"""``make demo`` compares every method and ends by listing what it wrote, as the README says.

Running the demo takes minutes (it is run by hand; see the README's figures);
these checks read the Makefile so that a method added to ``mp reconstruct``
cannot be left out of the comparison, and the README's listing cannot drift.
"""

import re
from pathlib import Path

from mpcli.reconstruct import METHODS

ROOT = Path(__file__).resolve().parents[1]


def _demo_recipe() -> str:
    text = (ROOT / "Makefile").read_text()
    return text.split("\ndemo:", 1)[1].split("\n\n", 1)[0]


def test_demo_compares_every_method():
    text = (ROOT / "Makefile").read_text()
    demo_methods = re.search(r"^DEMO_METHODS\s*=\s*(.+)$", text, re.M).group(1).split()
    assert set(demo_methods) | {"adapted"} == set(METHODS)  # adapted comes from mp adapt --recon
    recipe = _demo_recipe()
    assert "mp eval $(DEMO_METHODS:%=out/demo/%/brain_fastmri.h5) out/demo/adapted/brain_fastmri.h5" in recipe


def test_demo_listing_matches_readme_and_is_checked():
    recipe = _demo_recipe()
    listed = re.findall(r'@echo "(  out/demo/[^"]*)"', recipe)
    assert listed, recipe
    readme = (ROOT / "README.md").read_text()
    block = readme.split("make demo wrote:\n", 1)[1].split("```", 1)[0].rstrip("\n").splitlines()
    assert block == listed
    for path in ("out/demo/report.png", "out/demo/adapt_curve.png", "out/demo/adapted/adapted.safetensors",
                 "out/demo/adapted/brain_fastmri.nii.gz", "out/demo/adapted/brain_fastmri_dicom/"):
        assert path in recipe.split("make demo wrote")[0]  # checked to exist before it is announced
