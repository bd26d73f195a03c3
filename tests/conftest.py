"""Shared fixtures: a real Orthanc PACS for the C-STORE tests.

``orthanc`` starts the Debian package's ``/usr/sbin/Orthanc`` once per test
session on free local ports, with its own configuration and storage under a
temporary folder, and stops it afterwards. It is skipped, with the reason,
only where Orthanc is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ORTHANC_AET = "MPTESTPACS"


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    """A running Orthanc: its DICOM address and a tiny REST client."""

    aet: str
    dicom_port: int
    http_port: int

    @property
    def destination(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            return r.read()

    def post(self, path: str, body: dict):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def series(self, series_uid: str) -> list[dict]:
        """The instances Orthanc holds for ``series_uid``: simplified tags of each (plus
        ``OrthancID``), by InstanceNumber."""
        ids = self.post("/tools/find", {"Level": "Series", "Query": {"SeriesInstanceUID": series_uid}})
        if not ids:
            return []
        assert len(ids) == 1
        tags = [{**self.get(f"/instances/{i['ID']}/simplified-tags"), "OrthancID": i["ID"]}
                for i in self.get(f"/series/{ids[0]}/instances")]
        return sorted(tags, key=lambda t: int(t["InstanceNumber"]))


def _orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
                                            if Path(p).exists()), None)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    binary = _orthanc_binary()
    if binary is None:
        pytest.skip("Orthanc is not installed (Debian package 'orthanc'; .ci/run installs it)")
    root = tmp_path_factory.mktemp("orthanc")
    server = Orthanc(ORTHANC_AET, free_port(), free_port())
    config = {
        "Name": "mp-test", "DicomAet": server.aet, "DicomPort": server.dicom_port, "HttpPort": server.http_port,
        "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
        "DicomCheckCalledAet": True,  # a real PACS refuses associations addressed to another AE title
        "AuthenticationEnabled": False, "RemoteAccessAllowed": False, "Plugins": [],
        "HttpServerEnabled": True, "DicomServerEnabled": True,
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = open(root / "orthanc.log", "w")
    proc = subprocess.Popen([binary, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                server.get("/system")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (root / "orthanc.log").read_text()[-2000:]
                    pytest.fail(f"Orthanc did not start (exit {proc.poll()}):\n{tail}")
                time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
