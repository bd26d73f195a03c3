"""Deliver a batch's DICOM series to a PACS, remembering what it acknowledged.

Once an input's outputs and its complete manifest ``<stem>.mp.json`` exist,
every instance of its DICOM series (the ``…_dicom`` folders the manifest
lists) that the manifest does not yet record as acknowledged by this
destination is sent by C-STORE (:mod:`mpcli.io.pacs`), and the acknowledged
ones are added to the manifest (atomically) under::

    "sent": {"AET@HOST:PORT": {"<series folder>/<file>": "<SOPInstanceUID>", …}}

A record counts only while the file still holds that SOP Instance UID, so a
series rewritten since is sent again. A later ``--resume`` run (or the
watcher after a restart) therefore sends exactly the instances that were not
acknowledged. A failed send never removes the local outputs: the input's
outcome becomes *failed* (exit code 4, output error) with one line naming the
destination and why, and the batch goes on. The ``sent`` record is not part
of the manifest key, so it never makes ``--resume`` reconstruct again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mpcli.batch import Outcome, manifest_path, read_manifest, write_json
from mpcli.errors import EXIT_INTERNAL, EXIT_OUTPUT, MpError, OutputError, printable
from mpcli.io.pacs import (
    DEFAULT_TIMEOUT,
    InstanceResult,
    PacsDestination,
    send_series,
    summarize,
)
from mpcli.output_plan import OUTPUT_NAMES

_SERIES_SUFFIX = OUTPUT_NAMES["dicom"].format("")  # "_dicom"

SendFn = Callable[[list[Path], PacsDestination, str, float], list[InstanceResult]]


@dataclass
class SendReport:
    """One input's delivery to one destination."""

    destination: str
    instances: int = 0  # DICOM instances the input's series hold
    already: int = 0  # acknowledged by an earlier run, not sent again
    sent: list[InstanceResult] = field(default_factory=list)  # what this run tried

    @property
    def acknowledged(self) -> int:
        return self.already + sum(r.acknowledged for r in self.sent)

    @property
    def complete(self) -> bool:
        return self.acknowledged == self.instances

    def summary(self) -> str:
        return summarize(self.sent)

    def as_dict(self) -> dict:
        """The facts logged by ``mp watch`` (no patient data)."""
        return {"destination": self.destination, "instances": self.instances, "acknowledged": self.acknowledged,
                "already_acknowledged": self.already, "sent_now": len(self.sent),
                **({} if self.complete else {"reason": self.summary()})}


def series_instances(out_dir: Path, manifest: dict) -> list[str]:
    """``<series folder>/<file>`` of every DICOM instance a complete manifest lists, sorted."""
    outputs = manifest.get("outputs", {})
    names = []
    for rel in sorted(outputs if isinstance(outputs, dict) else {}):
        if isinstance(rel, str) and rel.endswith(_SERIES_SUFFIX) and (out_dir / rel).is_dir():
            names += [f"{rel}/{f.name}" for f in sorted((out_dir / rel).glob("*.dcm")) if f.is_file()]
    return names


def deliver(out_dir: Path, stem: str, dest: PacsDestination, calling_aet: str, *,
            timeout: float = DEFAULT_TIMEOUT, send: SendFn = send_series) -> SendReport:
    """Send the not-yet-acknowledged instances of input ``stem``'s series to ``dest``;
    record the newly acknowledged ones in its manifest.

    Raises:
        OutputError: the manifest is missing or incomplete, or cannot be rewritten.
    """
    import pydicom

    path = manifest_path(out_dir, stem)
    manifest = read_manifest(path)
    if manifest is None or manifest.get("status", "complete") != "complete":
        raise OutputError(path, "no complete manifest: nothing to send")
    key = str(dest)
    sent = manifest.get("sent") if isinstance(manifest.get("sent"), dict) else {}
    record = sent.get(key) if isinstance(sent.get(key), dict) else {}
    names = series_instances(out_dir, manifest)
    report = SendReport(key, instances=len(names))
    todo, kept = [], {}
    for rel in names:
        uid = record.get(rel)
        if uid and _sop_instance_uid(pydicom, out_dir / rel) == uid:
            kept[rel] = uid
        else:
            todo.append(rel)
    report.already = len(kept)
    if todo:
        report.sent = send([out_dir / rel for rel in todo], dest, calling_aet, timeout)
        kept.update({rel: r.sop_instance_uid for rel, r in zip(todo, report.sent, strict=True)
                     if r.acknowledged})
    if kept != record:
        write_json(path, dict(manifest, sent=dict(sent, **{key: dict(sorted(kept.items()))})))
    return report


def _sop_instance_uid(pydicom, path: Path) -> str:
    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
                   .SOPInstanceUID)
    except Exception:  # unreadable or changed: send it again
        return ""


UNREACHABLE_PAUSE = 60.0
"""Seconds during which a PACS that could not be reached is not tried again (each
attempt at a firewalled host costs the whole connection timeout)."""


class PacsSender:
    """``run_batch``'s ``after`` step: deliver each finished input's series to one PACS.

    A failed input is passed through; a done or skipped one whose instances
    are not all acknowledged becomes failed (exit code 4) with its outputs kept.
    After a connection failure, the next inputs for ``pause`` seconds fail at once with the same reason instead of waiting for the
    timeout again. ``reports`` holds each input's :class:`SendReport`, by stem.
    """

    def __init__(self, out_dir: Path, dest: PacsDestination, calling_aet: str, *,
                 timeout: float = DEFAULT_TIMEOUT, send: SendFn = send_series, pause: float = UNREACHABLE_PAUSE):
        self.out_dir, self.dest, self.calling_aet = out_dir, dest, calling_aet
        self.timeout, self.send, self.pause = timeout, send, pause
        self.reports: dict[str, SendReport] = {}
        self._down: tuple[float, str] | None = None  # (monotonic time of the failure, its reason)

    def _send(self, paths: list[Path], dest: PacsDestination, calling_aet: str,
              timeout: float) -> list[InstanceResult]:
        now = time.monotonic()
        if self._down is not None and now - self._down[0] < self.pause:
            reason = f"not tried: {self._down[1]} {now - self._down[0]:.0f} s ago"
            return [InstanceResult(p, "", False, reason=reason) for p in paths]
        results = self.send(paths, dest, calling_aet, timeout)
        unreachable = [r.reason for r in results if r.reason.startswith(("cannot connect", "cannot resolve"))]
        self._down = (time.monotonic(), unreachable[0]) if unreachable and len(unreachable) == len(results) \
            else None
        return results

    def __call__(self, outcome: Outcome) -> Outcome:
        if outcome.status == "failed":
            return outcome
        try:
            report = deliver(self.out_dir, outcome.stem, self.dest, self.calling_aet,
                             timeout=self.timeout, send=self._send)
        except MpError as exc:
            return dataclasses.replace(outcome, status="failed", error=str(exc), exit_code=exc.exit_code)
        except Exception as exc:  # a bug: reported for this input, the batch goes on
            text = " ".join(f"{exc.__class__.__name__}: {exc}".split())[:300]
            return dataclasses.replace(outcome, status="failed", exit_code=EXIT_INTERNAL, error=printable(
                f"{outcome.input}: internal error while sending to {self.dest}: {text}"))
        self.reports[outcome.stem] = report
        if report.complete:
            return outcome
        error = (f"{outcome.input}: not delivered to {self.dest}: {report.summary()}; outputs kept in "
                 f"{self.out_dir}, --resume sends the rest")
        return dataclasses.replace(outcome, status="failed", error=printable(error), exit_code=EXIT_OUTPUT)
