"""Send DICOM files to a PACS by C-STORE (pynetdicom), one result per instance.

A destination is written ``AET@HOST:PORT`` (the called AE title, then where
its DICOM service listens), e.g. ``ORTHANC@pacs.example.org:4242`` or
``PACS@[fd00::5]:104``. Parsing is strict, since a typo would otherwise send
images to the wrong place or fail minutes later: the AE title is 1–16
characters of the DICOM default repertoire (printable ASCII without ``\\``),
with no leading or trailing space; the host is a DNS name, an IPv4 address or
a bracketed IPv6 address; the port an integer in 1–65535.

:func:`send_series` opens one association per call (proposing, for each SOP
class in the files, the file's own transfer syntax first), stores each file,
and reports for every instance whether the PACS acknowledged it: a C-STORE
response whose status is in the *Success* or *Warning* category (PS3.4 B.2.3:
a warning still means the instance was stored). Anything else — no
connection, association rejected or aborted, no presentation context, a
failure status, no response within the timeout — leaves the instance
unacknowledged with a one-line reason. Nothing here retries or raises for a
network failure: the caller records what was acknowledged and retries the
rest later.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mpcli.errors import UsageError

DEFAULT_CALLING_AET = "MP"
DEFAULT_TIMEOUT = 30.0  # seconds for connecting, association and each response

_AET = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # default repertoire, no backslash, no control
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class PacsDestination:
    """Where to C-STORE: the called AE title and its DICOM address."""

    aet: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.aet}@{host}:{self.port}"


def check_aet(aet: str, option: str) -> str:
    """``aet`` when it is a valid AE title, else :class:`UsageError` naming ``option``."""
    if not _AET.fullmatch(aet) or aet != aet.strip():
        raise UsageError(None, f"{option}: {aet!r} is not a DICOM AE title (1-16 printable ASCII "
                               "characters, no backslash, no leading or trailing space)")
    return aet


def parse_destination(spec: str, option: str = "--send") -> PacsDestination:
    """``"AET@HOST:PORT"`` → :class:`PacsDestination`; a malformed spec is a :class:`UsageError`."""
    usage = f"{option} must look like AET@HOST:PORT (e.g. ORTHANC@pacs.example.org:4242), got {spec!r}"
    aet, at, address = spec.rpartition("@")
    if not at or not aet:
        raise UsageError(None, usage)
    check_aet(aet, option)
    if address.startswith("["):  # [IPv6]:port
        host, bracket, port = address[1:].partition("]:")
        if not bracket:
            raise UsageError(None, usage)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UsageError(None, f"{option}: {host!r} is not an IPv6 address") from None
    else:
        host, colon, port = address.rpartition(":")
        if not colon or not host or ":" in host:
            raise UsageError(None, usage)
        if not _valid_host(host):
            raise UsageError(None, f"{option}: {host!r} is not a host name or IPv4 address")
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(None, f"{option}: port must be an integer in 1-65535, got {port!r}")
    return PacsDestination(aet, host, int(port))


def _valid_host(host: str) -> bool:
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
            return True
        except ValueError:
            return False
    name = host[:-1] if host.endswith(".") else host
    return len(name) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in name.split("."))


@dataclass
class InstanceResult:
    """What the PACS said about one file."""

    path: Path
    sop_instance_uid: str  # "" when the file could not be read
    acknowledged: bool
    status: int | None = None  # the C-STORE response status, when there was one
    reason: str = ""  # why it is not acknowledged ("" when it is)


def summarize(results: list[InstanceResult]) -> str:
    """One line: how many instances were not acknowledged, and why (most common first)."""
    failed = [r for r in results if not r.acknowledged]
    if not failed:
        return f"all {len(results)} instances acknowledged"
    reasons = "; ".join(f"{reason} (x{n})" if n > 1 else reason
                        for reason, n in Counter(r.reason for r in failed).most_common(3))
    return f"{len(failed)} of {len(results)} instances not acknowledged: {reasons}"


def send_series(paths: list[Path], dest: PacsDestination, calling_aet: str = DEFAULT_CALLING_AET,
                timeout: float = DEFAULT_TIMEOUT) -> list[InstanceResult]:
    """C-STORE ``paths`` to ``dest`` over one association; one result per path, in order.

    Never raises for a network or PACS failure: those are unacknowledged results.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    results: list[InstanceResult] = []
    contexts: dict[str, list[str]] = {}  # SOP class -> transfer syntaxes to propose
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            sop_class, sop_uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
            syntax = str(ds.file_meta.TransferSyntaxUID)
        except (OSError, InvalidDicomError, AttributeError, KeyError, ValueError) as exc:
            results.append(InstanceResult(path, "", False, reason=f"not a readable DICOM file ({exc})"))
            continue
        contexts.setdefault(sop_class, [])
        if syntax not in contexts[sop_class]:
            contexts[sop_class].append(syntax)
        results.append(InstanceResult(path, sop_uid, False, reason="not sent"))
    pending = [r for r in results if r.sop_instance_uid]
    if not pending:
        return results
    reason = _unreachable(dest, timeout)
    if reason:
        for r in pending:
            r.reason = reason
        return results
    _store(pending, contexts, dest, calling_aet, timeout)
    return results


def _unreachable(dest: PacsDestination, timeout: float) -> str:
    """Why a TCP connection to ``dest`` fails ("" when it opens): a precise OS reason
    that pynetdicom's association would hide behind a generic failure."""
    try:
        socket.create_connection((dest.host, dest.port), timeout=timeout).close()
    except socket.gaierror as exc:
        return f"cannot resolve host {dest.host} ({exc.strerror or exc})"
    except OSError as exc:
        return f"cannot connect to {dest.host}:{dest.port} ({exc.strerror or exc})"
    return ""


def _store(pending: list[InstanceResult], contexts: dict[str, list[str]], dest: PacsDestination,
           calling_aet: str, timeout: float) -> None:
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE, evt
    from pynetdicom.status import code_to_category

    ae = AE(ae_title=calling_aet)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, list(dict.fromkeys([*syntaxes, ExplicitVRLittleEndian,
                                                                ImplicitVRLittleEndian])))
    rejection = []

    def on_acse(event):  # keep the PACS's own reason for a rejection (A-ASSOCIATE-RJ)
        primitive = event.primitive
        if getattr(primitive, "result", None) in (0x01, 0x02):
            rejection.append(f"{primitive.reason_str}, {primitive.result_str.lower()}")

    for _attempt in range(2):  # an abort before any answer (the peer closed at once) is tried once more
        rejection.clear()
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.aet,
                             evt_handlers=[(evt.EVT_ACSE_RECV, on_acse)])
        if assoc.is_established or assoc.is_rejected or rejection or assoc.accepted_contexts \
                or assoc.rejected_contexts or not assoc.is_aborted:
            break
    if not assoc.is_established:
        if assoc.is_rejected or rejection:
            why = (f"association rejected ({rejection[0] if rejection else 'no reason given'}; is the called "
                   f"AE title right, and does the PACS accept calling AE {calling_aet}?)")
        elif assoc.is_aborted and assoc.rejected_contexts and not assoc.accepted_contexts:
            why = "the PACS accepts none of the offered SOP classes / transfer syntaxes"
        else:
            why = "association aborted" if assoc.is_aborted else "association failed"
        for r in pending:
            r.reason = why
        return
    try:
        for r in pending:
            if not assoc.is_established:
                r.reason = "association ended before this instance was sent"
                continue
            try:
                status = assoc.send_c_store(r.path)
            except (ValueError, RuntimeError, OSError) as exc:  # no accepted context, unreadable file
                r.reason = " ".join(str(exc).split())[:200] or exc.__class__.__name__
                continue
            if "Status" not in status:
                r.reason = "no response (timeout or association aborted)"
                continue
            r.status = int(status.Status)
            if code_to_category(r.status) in ("Success", "Warning"):
                r.acknowledged, r.reason = True, ""
            else:
                comment = str(status.get("ErrorComment", "") or "").strip()
                r.reason = f"refused with status 0x{r.status:04X}" + (f" ({comment})" if comment else "")
    except BaseException:  # interrupted (Ctrl-C): end the association without waiting for the PACS
        assoc.abort()
        raise
    if assoc.is_established:
        assoc.release()
