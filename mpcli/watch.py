"""Watch a folder and reconstruct each k-space file that lands in it: the loop behind ``mp watch``.

Finding files. Every ``poll`` seconds the inbox is listed like a batch input
folder (:func:`mpcli.batch.collect_inputs`: recursive, k-space suffixes, hidden
files and folders skipped), and temporary names are ignored (:func:`is_temporary`:
dotfiles, ``*.tmp``, ``*.part``, ``*.partial``, ``*.crdownload``, ``*~``). A
file is *complete* when its (size, mtime) has stayed the same over ``settle``
seconds of this process's own clock — never by comparing the file's mtime with
now, which on a network share comes from another machine's clock. A writer
that writes under a temporary name and renames when done is never seen half
written.

Processing. Each complete file goes through the batch runner,
:func:`mpcli.batch.run_batch` with ``resume=True`` and one input, so it gets
the same atomic outputs, pending/complete manifests, name checks and per-file
errors as ``mp reconstruct``; a bad file is logged and the watcher goes on.
What is done is known from the output manifests alone: a file whose complete
manifest matches it (input SHA-256, model, options) is *skipped*, so a
restarted watcher picks up every file it missed and redoes none. In memory the
watcher remembers the signature each file had when handled, and looks at a
file again only when it changes (a failed file is retried when it is replaced,
or after a restart); a file replaced by different content under the same name
is reconstructed again and its outputs replaced.

Output names. The path inside the inbox, folders joined by ``__``
(``INBOX/site1/scan.h5`` → ``site1__scan``), made file-name safe; it does not
depend on what else is in the inbox, so it survives restarts. Two inputs that
map to one name (``a/b.h5`` and ``a__b.h5``): the second is refused (exit code
4 in its log line) while the first exists.

PACS. With a sender (``after``), an input whose series the PACS did not
fully acknowledge is logged *failed* (outputs kept) and looked at again
``retry`` seconds later, until everything is acknowledged; a restart also
sends what is missing.

Stopping (:func:`stop_signals`): SIGTERM finishes the current file and stops
(exit 0, the way ``systemctl stop`` expects); SIGINT (Ctrl-C), or a second
SIGTERM, abandons the current file — what it had written is removed — and
exits 130. Even SIGKILL leaves nothing half-written (atomic writes), and the
next start redoes the abandoned file.

Log. One JSON object per line (``time`` in UTC ISO 8601, ``event``, fields):
``start``, ``waiting`` (a new file, not yet settled), ``processing`` (a complete
file is being handled), ``done`` / ``skipped`` /
``failed`` (input, stem, outputs, seconds, error, exit_code, and ``sent`` with
the PACS acknowledgements when sending), ``error`` (the inbox could not be
listed; the watcher keeps polling), ``stop`` (reason, exit_code).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from mpcli import __version__
from mpcli.batch import Outcome, Process, collect_inputs, run_batch
from mpcli.errors import EXIT_OUTPUT, MpError, OutputError
from mpcli.output_plan import MAX_STEM, sanitize
from mpcli.scan import KSPACE_SUFFIXES

TEMPORARY = (".*", "*.tmp", "*.part", "*.partial", "*.crdownload", "*~")
"""Name patterns (case-insensitive) of files still being written: never read."""

DEFAULT_SETTLE = 5.0
DEFAULT_POLL = 1.0
DEFAULT_RETRY = 300.0


def is_temporary(name: str) -> bool:
    """True when ``name`` matches one of :data:`TEMPORARY`."""
    lower = name.lower()
    return any(fnmatch.fnmatchcase(lower, pattern) for pattern in TEMPORARY)


def watch_stem(inbox: Path, f: Path) -> str:
    """Output stem of inbox file ``f``: its path inside ``inbox``, folders joined by ``__``."""
    rel = Path(os.path.relpath(f, inbox))
    name = rel.name
    for suffix in KSPACE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    stem = "__".join(sanitize(part) for part in [*rel.parent.parts, name] if part not in ("", "."))
    if len(stem.encode()) > MAX_STEM:
        head = stem.encode()[: MAX_STEM - 9].decode("utf-8", "ignore")
        stem = f"{head}_{hashlib.sha256(str(rel).encode()).hexdigest()[:8]}"
    return stem


class StopFlag:
    """Set by SIGTERM: stop after the current file."""

    def __init__(self) -> None:
        self.reason = ""

    def __bool__(self) -> bool:
        return bool(self.reason)


@contextmanager
def stop_signals(flag: StopFlag) -> Iterator[StopFlag]:
    """SIGTERM sets ``flag`` (a second one raises KeyboardInterrupt); SIGINT raises
    KeyboardInterrupt. The previous handlers come back on exit."""

    def on_term(signum, frame):
        if flag:
            raise KeyboardInterrupt
        flag.reason = "SIGTERM"

    def on_int(signum, frame):
        flag.reason = "SIGINT"
        raise KeyboardInterrupt

    old = {signal.SIGTERM: signal.signal(signal.SIGTERM, on_term),
           signal.SIGINT: signal.signal(signal.SIGINT, on_int)}
    try:
        yield flag
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


class JsonlLog:
    """Append one JSON object per line, flushed at once (a killed watcher loses no line)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")
        except OSError as err:
            raise OutputError(path, f"cannot open the log ({err.strerror or err})") from None

    def write(self, event: str, **fields) -> dict:
        record = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": event, **fields}
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()
        return record

    def close(self) -> None:
        self._file.close()


@dataclass
class WatchResult:
    """What one run of the watcher did (outcomes in processing order)."""

    outcomes: list[Outcome] = field(default_factory=list)
    reason: str = ""  # "once" | "SIGTERM"


def watch(inbox: Path, out_dir: Path, process: Process, *, model_sha256: str | None, options: dict,
          formats: tuple[str, ...], log: JsonlLog, settle: float = DEFAULT_SETTLE,
          poll: float = DEFAULT_POLL, once: bool = False, stop: StopFlag | None = None,
          after: Callable[[Outcome], Outcome] | None = None, reports: Callable[[str], dict] | None = None,
          on_event: Callable[[dict], None] | None = None, start_fields: dict | None = None,
          retry: float = DEFAULT_RETRY) -> WatchResult:
    """Reconstruct every complete k-space file in ``inbox`` into ``out_dir`` until stopped.

    ``process``, ``model_sha256``, ``options``, ``formats`` and ``after`` are
    :func:`mpcli.batch.run_batch`'s. ``once``: return when every file present
    has been handled (waiting for those still being written). ``stop``: a
    :class:`StopFlag` checked between files and while idle. ``reports(stem)``
    gives (once) the delivery facts logged under ``sent``; when they say some
    instances were not acknowledged, the file is handled again ``retry``
    seconds later (its reconstruction is then skipped, only the rest is sent).
    ``on_event`` sees each log record (the CLI prints them). KeyboardInterrupt is logged and re-raised.
    """
    stop = stop if stop is not None else StopFlag()
    result = WatchResult()

    def emit(event: str, **fields) -> None:
        record = log.write(event, **fields)
        if on_event:
            on_event(record)

    emit("start", inbox=str(inbox), out=str(out_dir), settle=settle, poll=poll, once=once, pid=os.getpid(),
         version=__version__, **(start_fields or {}))
    seen: dict[Path, tuple[tuple[int, int], float]] = {}  # file -> (signature, monotonic time first seen so)
    handled: dict[Path, tuple[int, int]] = {}  # file -> signature when handled
    owners: dict[str, Path] = {}  # stem -> the input that holds it
    retry_at: dict[Path, float] = {}  # file -> monotonic time to send what the PACS did not acknowledge
    try:
        while not stop:
            now = time.monotonic()
            try:
                files = [f for f in collect_inputs([inbox]) if not is_temporary(f.name)]
            except MpError as exc:
                emit("error", error=str(exc))
                files = []
            ready, waiting = [], 0
            present = set(files)
            for f in files:
                sig = _signature(f)
                if sig is None or handled.get(f) == sig:
                    continue
                first = seen.get(f)
                if first is None or first[0] != sig:
                    if first is None:
                        emit("waiting", input=str(f))
                    seen[f] = (sig, now)
                    waiting += 1
                elif now - first[1] >= settle:
                    ready.append(f)
                else:
                    waiting += 1
            for gone in [f for f in [*seen, *handled] if f not in present]:
                seen.pop(gone, None)
                handled.pop(gone, None)
                retry_at.pop(gone, None)
            for f, due in list(retry_at.items()):
                if now >= due:  # look at it again: resume skips the reconstruction, sends the rest
                    handled.pop(f, None)
                    del retry_at[f]
            for f in ready:
                if stop:
                    break
                stem = watch_stem(inbox, f)
                owner = owners.get(stem)
                if owner is not None and owner != f and owner in present:
                    outcome = Outcome(f, stem, "failed", exit_code=EXIT_OUTPUT,
                                      error=str(OutputError(f, f"its output name {stem} is taken by {owner}; "
                                                               "rename one of them")))
                else:
                    owners[stem] = f
                    emit("processing", input=str(f), stem=stem)
                    try:
                        outcome = run_batch([f], out_dir, process, model_sha256=model_sha256, options=options,
                                            formats=formats, resume=True, stems={f: stem}, after=after)[0]
                    except MpError as exc:  # the output folder itself failed (removed, full): keep watching
                        outcome = Outcome(f, stem, "failed", error=str(exc), exit_code=exc.exit_code)
                handled[f] = seen.pop(f)[0]
                result.outcomes.append(outcome)
                fields = {"input": str(f), "stem": outcome.stem,
                          "outputs": [os.path.relpath(p, out_dir) for p in outcome.outputs],
                          "seconds": round(outcome.seconds, 3)}
                if outcome.status == "failed":
                    fields.update(error=outcome.error, exit_code=outcome.exit_code)
                sent = reports(outcome.stem) if reports is not None else None
                if sent:
                    fields["sent"] = sent
                    if not once and sent.get("acknowledged", 0) < sent.get("instances", 0):
                        retry_at[f] = time.monotonic() + retry
                        fields["retry_in"] = retry
                emit(outcome.status, **fields)
            if once and not waiting and not ready:  # a pass that found nothing left to do
                stop.reason = stop.reason or "once"
                break
            _sleep(min(poll, settle) if once else poll, stop)
    except KeyboardInterrupt:
        emit("stop", reason=stop.reason or "SIGINT", exit_code=130)
        raise
    result.reason = stop.reason
    emit("stop", reason=stop.reason)
    return result


def _signature(f: Path) -> tuple[int, int] | None:
    try:
        st = f.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def _sleep(seconds: float, stop: StopFlag) -> None:
    """Sleep in short steps so that SIGTERM ends the wait promptly."""
    end = time.monotonic() + seconds
    while not stop and (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.1))
