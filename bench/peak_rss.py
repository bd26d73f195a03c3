"""Peak resident memory of the current process (standard library only, so that the
timed children of ``bench/speed.py`` can import it without loading anything else)."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB: VmHWM of /proc/self/status, which
    starts afresh at exec; else ``ru_maxrss``, which Linux carries over from the parent
    across exec (it over-reports a child started by a large parent)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
