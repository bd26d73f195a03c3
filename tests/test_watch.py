"""``mp watch``: files copied in slowly or renamed in, temporary names, a bad file,
stops (SIGTERM, SIGINT, SIGKILL) and restarts; every good file reconstructed
exactly once, nothing half-written."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpcli.errors import EXIT_INTERRUPTED, EXIT_PARTIAL, EXIT_USAGE
from mpcli.watch import is_temporary, watch_stem
from tests.cli_helpers import mp
from tests.synthetic import write_synthetic_fastmri, write_synthetic_ismrmrd

FAST = ["--method", "zero-filled", "--settle", "0.3", "--poll", "0.05"]


def events(log: Path) -> list[dict]:
    """The log's records (a line cut by SIGKILL is ignored)."""
    out = []
    for line in log.read_text().splitlines() if log.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def named(records, event, name=None):
    return [r for r in records if r["event"] == event and (name is None or Path(r["input"]).name == name)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Good scans to copy into inboxes (distinct content)."""
    d = tmp_path_factory.mktemp("sources")
    for k in range(5):
        write_synthetic_fastmri(d / f"g{k}.h5", slices=2, coils=4, h=32, w=24, seed=30 + k, acceleration=2)
    write_synthetic_ismrmrd(d / "oblique.h5", slices=2, coils=4, h=32, w=24, seed=40, acceleration=2)
    return d


@pytest.mark.parametrize("name, temporary", [
    ("scan.h5", False), ("meas_MID42.mrd", False), (".scan.h5", True), ("scan.h5.tmp", True),
    ("scan.h5.part", True), ("scan.PARTIAL", True), ("scan.h5~", True), ("scan.h5.crdownload", True),
])
def test_temporary_names(name, temporary):
    assert is_temporary(name) is temporary


def test_output_stem_is_the_path_inside_the_inbox(tmp_path):
    assert watch_stem(tmp_path, tmp_path / "scan.h5") == "scan"
    assert watch_stem(tmp_path, tmp_path / "site 1" / "knee.MRD") == "site_1__knee"
    long = watch_stem(tmp_path, tmp_path / ("x" * 300 + ".h5"))
    assert len(long.encode()) <= 120 and long != watch_stem(tmp_path, tmp_path / ("x" * 301 + ".h5"))


def test_once_reconstructs_good_files_logs_bad_ones_and_ignores_temporaries(sources, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    (inbox / "site").mkdir(parents=True)
    shutil.copy(sources / "g0.h5", inbox / "a.h5")
    shutil.copy(sources / "g1.h5", inbox / "site" / "b.h5")
    shutil.copy(sources / "g2.h5", inbox / "c.h5.part")  # still being copied, by its name
    shutil.copy(sources / "g3.h5", inbox / ".d.h5")
    (inbox / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n but cut short")
    res = mp("watch", inbox, "--out", out, *FAST, "--format", "h5,nifti", "--once")
    assert res.exit_code == EXIT_PARTIAL, res.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["a.h5", "a.nii.gz", "a.mp.json", "site__b.h5", "site__b.nii.gz", "site__b.mp.json", "watch.jsonl"])
    log = events(out / "watch.jsonl")
    assert log[0]["event"] == "start" and log[-1] == {**log[-1], "event": "stop", "reason": "once"}
    assert len(named(log, "done", "a.h5")) == len(named(log, "done", "b.h5")) == 1
    failed, = named(log, "failed")
    assert failed["input"].endswith("bad.h5") and failed["exit_code"] == 3
    assert "bad.h5" in res.stderr

    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "watch.jsonl"}
    res = mp("watch", inbox, "--out", out, *FAST, "--format", "h5,nifti", "--once")  # a restart
    assert res.exit_code == EXIT_PARTIAL
    second = events(out / "watch.jsonl")[len(log):]
    assert not named(second, "done")  # nothing redone
    assert {Path(r["input"]).name for r in named(second, "skipped")} == {"a.h5", "b.h5"}
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "watch.jsonl"} == before


def test_watch_usage_errors(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for args in (["--method", "nope"], ["--format", "dicom", "--send", "PACS@host"], ["--send", "P@h:1"],
                 ["--settle", "-1"]):
        res = mp("watch", inbox, "--out", tmp_path / "out", "--once", *args)
        assert res.exit_code == EXIT_USAGE, (args, res.stderr)
    assert mp("watch", tmp_path / "missing", "--out", tmp_path / "out", "--once").exit_code == 3
    assert mp("watch", inbox, "--out", inbox / "out", "--once").exit_code == 4  # output inside the inbox
    assert not (tmp_path / "out").exists()


def test_watch_sends_each_series_to_orthanc(orthanc, sources, tmp_path):
    from tests.test_pacs import assert_arrived_whole

    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    shutil.copy(sources / "oblique.h5", inbox / "oblique.h5")
    res = mp("watch", inbox, "--out", out, *FAST, "--format", "dicom", "--send", orthanc.destination, "--once")
    assert res.exit_code == 0, res.stderr
    assert_arrived_whole(orthanc, out / "oblique_dicom")
    done, = named(events(out / "watch.jsonl"), "done")
    assert done["sent"]["destination"] == orthanc.destination
    assert done["sent"]["acknowledged"] == done["sent"]["instances"] == 2


# ----------------------------------------------------------------- a long-running watcher


def _start(inbox: Path, out: Path, *extra) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mpcli", "watch", str(inbox), "--out", str(out), "--method", "zero-filled",
           "--format", "h5,dicom", "--settle", "1.0", "--poll", "0.1", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _finish(proc: subprocess.Popen) -> int:
    """Wait for the watcher to exit (closing its stderr pipe); its exit code."""
    proc.communicate(timeout=30)
    return proc.returncode


def _wait(predicate, timeout=90.0, proc=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"watcher exited early ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("timed out")


def _copy_slowly(src: Path, dst: Path, chunks: int = 8, pause: float = 0.25) -> None:
    """Copy in pieces, ``pause`` seconds apart (less than --settle), like a slow network export."""
    data = src.read_bytes()
    step = -(-len(data) // chunks)
    with open(dst, "wb") as f:
        for k in range(chunks):
            f.write(data[k * step:(k + 1) * step])
            f.flush()
            time.sleep(pause)


def _complete_or_absent(out: Path, stem: str, slices: int = 2) -> bool:
    """True when ``stem``'s outputs are complete (returns True) or absent (False); never partial."""
    h5, series, manifest = out / f"{stem}.h5", out / f"{stem}_dicom", out / f"{stem}.mp.json"
    if series.exists():
        assert len(list(series.glob("*.dcm"))) == slices
    if manifest.exists() and json.loads(manifest.read_text()).get("status") == "complete":
        assert h5.is_file() and series.is_dir()
        return True
    return False


@pytest.mark.slow
def test_slow_copies_bad_file_stop_and_restart_reconstruct_each_good_file_once(sources, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    log = out / "watch.jsonl"
    proc = _start(inbox, out)
    _wait(lambda: named(events(log), "start"), proc=proc)

    _copy_slowly(sources / "g0.h5", inbox / "slow.h5")  # visible under its final name while growing
    _copy_slowly(sources / "g1.h5", inbox / "renamed.h5.part")
    os.rename(inbox / "renamed.h5.part", inbox / "renamed.h5")
    (inbox / "bad.h5").write_bytes(b"not k-space at all")
    _wait(lambda: len(named(events(log), "done")) == 2 and named(events(log), "failed"), proc=proc)
    proc.send_signal(signal.SIGTERM)
    assert _finish(proc) == 0
    assert events(log)[-1]["event"] == "stop" and events(log)[-1]["reason"] == "SIGTERM"

    # while it is down, two files arrive; then it is killed (SIGKILL) while handling them
    shutil.copy(sources / "g2.h5", inbox / "late1.h5")
    shutil.copy(sources / "g3.h5", inbox / "late2.h5")
    seen = len(events(log))
    proc = _start(inbox, out)
    _wait(lambda: any(r["event"] in ("done", "skipped") for r in events(log)[seen:]), proc=proc)
    proc.send_signal(signal.SIGKILL)
    _finish(proc)
    finished = {stem: _complete_or_absent(out, stem) for stem in ("slow", "renamed", "late1", "late2")}
    assert finished["slow"] and finished["renamed"]
    kept = {p: (p.stat().st_ino, p.read_bytes()) for p in out.rglob("*")
            if p.is_file() and p.name != "watch.jsonl" and not p.relative_to(out).parts[0].startswith(".")
            and finished[p.relative_to(out).parts[0].split(".")[0].removesuffix("_dicom")]}

    # a restart handles exactly what is missing, and nothing twice
    shutil.copy(sources / "g4.h5", inbox / "new.h5")
    seen = len(events(log))
    res = subprocess.run([sys.executable, "-m", "mpcli", "watch", str(inbox), "--out", str(out), "--method",
                          "zero-filled", "--format", "h5,dicom", "--settle", "0.3", "--poll", "0.05", "--once"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == EXIT_PARTIAL, res.stderr  # bad.h5 is still bad
    restart = events(log)[seen:]
    for stem in ("slow", "renamed", "late1", "late2", "new"):
        assert _complete_or_absent(out, stem), stem
        expected = "skipped" if finished.get(stem) else "done"
        assert len(named(restart, expected, f"{stem}.h5")) == 1, (stem, expected)
        assert len(named(restart, "done" if expected == "skipped" else "skipped", f"{stem}.h5")) == 0
    everything = events(log)
    for name in ("slow.h5", "renamed.h5"):  # the first run's files: one reconstruction, never failed
        assert len(named(everything, "done", name)) == 1 and not named(everything, "failed", name)
    assert {p: (p.stat().st_ino, p.read_bytes()) for p in kept} == kept  # finished outputs untouched
    assert not [p for p in out.rglob(".*")]  # no temporaries left
    assert not (out / "bad.mp.json").exists() and not (out / "bad.h5").exists()


def test_sigint_stops_the_watcher_with_130(tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    proc = _start(inbox, out)
    _wait(lambda: named(events(out / "watch.jsonl"), "start"), proc=proc)
    proc.send_signal(signal.SIGINT)
    assert _finish(proc) == EXIT_INTERRUPTED
    last = events(out / "watch.jsonl")[-1]
    assert last["event"] == "stop" and last["reason"] == "SIGINT"


@pytest.mark.slow
def test_watcher_sends_again_what_the_pacs_did_not_acknowledge(sources, tmp_path):
    from tests.test_pacs import FlakyPacs

    refused = []

    def refuse(ds):  # the first attempt at instance 2 fails, as during a PACS hiccup
        if int(ds.InstanceNumber) == 2 and not refused:
            refused.append(str(ds.SOPInstanceUID))
            return True
        return False

    pacs = FlakyPacs(refuse)
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    shutil.copy(sources / "g0.h5", inbox / "scan.h5")
    log = out / "watch.jsonl"
    proc = _start(inbox, out, "--send", pacs.destination, "--retry", "0.5")
    try:
        _wait(lambda: named(events(log), "skipped"), proc=proc)
        proc.send_signal(signal.SIGTERM)
        assert _finish(proc) == 0
    finally:
        pacs.server.shutdown()
        if proc.poll() is None:
            proc.kill()
            _finish(proc)
    failed, = named(events(log), "failed")
    assert failed["sent"]["acknowledged"] == 1 and failed["sent"]["instances"] == 2 and failed["retry_in"] == 0.5
    retried, = named(events(log), "skipped")  # not reconstructed again, only sent
    assert retried["sent"]["acknowledged"] == 2 and retried["sent"]["sent_now"] == 1
    assert not named(events(log), "done")  # the first handling failed (on sending), outputs kept
    assert len(pacs.received) == 3 and pacs.received.count(refused[0]) == 2  # only the refused one twice


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 0), (signal.SIGINT, EXIT_INTERRUPTED)])
def test_stop_during_a_file_finishes_it_or_abandons_it_cleanly(signum, code, tmp_path):
    """SIGTERM while a file is being reconstructed lets it finish; SIGINT abandons it,
    leaving no output at all, and the next start reconstructs it."""
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    write_synthetic_fastmri(inbox / "big.h5", slices=4, coils=8, h=96, w=96, seed=50, acceleration=2)
    log = out / "watch.jsonl"
    cmd = [sys.executable, "-m", "mpcli", "watch", str(inbox), "--out", str(out), "--method", "sense",
           "--format", "h5,dicom", "--settle", "0.2", "--poll", "0.05"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    _wait(lambda: named(events(log), "processing"), proc=proc)
    proc.send_signal(signum)
    rc = _finish(proc)
    # SIGINT: "mp: interrupted" and exit 130; now and then (1 run in ~12 on a busy machine, strace:
    # after printing it) CPython ends the process with its own kill(SIGINT) instead, which a shell
    # also reports as 130 — the outputs are checked below either way
    assert rc == code or (signum == signal.SIGINT and rc == -signal.SIGINT), rc
    records = events(log)
    assert records[-1]["event"] == "stop"
    if signum == signal.SIGTERM:
        assert named(records, "done", "big.h5") and _complete_or_absent(out, "big", slices=4)
    else:
        assert not named(records, "done", "big.h5")  # abandoned (unless it had just finished)
        assert sorted(p.name for p in out.iterdir()) == ["watch.jsonl"]
        res = subprocess.run([*cmd, "--once"], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        assert len(named(events(log), "done", "big.h5")) == 1 and _complete_or_absent(out, "big", slices=4)
