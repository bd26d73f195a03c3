"""The library behind ``mp info``: describe k-space files, one outcome per file.

Nothing identifying is reported (no patient or study fields): format, sizes,
sampling, voxel size and where the geometry came from.

Acceleration. ``R`` is *measured*: phase-encode lines over acquired lines for
a line mask (the same along the readout), else k-space samples over acquired
samples, with the fully sampled centre (calibration lines) included. Neither
fastMRI nor ISMRMRD files record the protocol's nominal R, and a random mask
drawn for a nominal R acquires a random number of lines (the sample's mask,
drawn for R = 4 with 8 % centre lines, holds 39 of 128 lines: R = 3.28).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mpcli.errors import MpError, printable

# what R means, for the JSON and the table's caption
ACCELERATION_KIND = "measured: all lines / acquired lines, centre (calibration) lines included"


@dataclass
class FileInfo:
    """What ``mp info`` found in one file: one row per frame, or the error."""

    path: Path
    frames: list[dict] = field(default_factory=list)
    error: str = ""
    exit_code: int = 0

    @property
    def ok(self) -> bool:
        return not self.error


def centre_lines(acquired: torch.Tensor) -> int:
    """Length of the run of acquired lines around the centre line ``W // 2`` (``acquired`` ``[W]`` bool)."""
    w = acquired.numel()
    c = w // 2
    if not bool(acquired[c]):
        return 0
    lo = c
    while lo > 0 and bool(acquired[lo - 1]):
        lo -= 1
    hi = c
    while hi < w - 1 and bool(acquired[hi + 1]):
        hi += 1
    return hi - lo + 1


def sampling(mask: torch.Tensor) -> dict:
    """Sampling of one slice's mask ``[H, W]``: lines (for line masks), centre lines, measured R."""
    m = mask > 0  # [H, W]
    if bool((m == m[:1]).all()):  # a line mask: every readout row the same
        lines = m[0]  # [W]
        acquired = int(lines.sum())
        return {"mask": "lines", "lines_acquired": acquired, "lines_total": int(lines.numel()),
                "centre_lines": centre_lines(lines), "acceleration": lines.numel() / max(acquired, 1)}
    acquired = int(m.sum())
    return {"mask": "2-D", "samples_acquired": acquired, "samples_total": int(m.numel()),
            "acceleration": m.numel() / max(acquired, 1)}


def describe_scan(path: Path, scan) -> dict:
    """One JSON-ready row for one frame of one file."""
    g = scan.geometry
    s, c, h, w = scan.shape
    return {"file": str(path), "frame": scan.frame, "format": scan.format,
            "shape": [s, c, h, w], "slices": s, "coils": c, "recon_size": list(scan.recon_size),
            **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in sampling(scan.mask[0, 0]).items()},
            "acceleration_kind": ACCELERATION_KIND,
            "voxel_mm": [round(v, 3) for v in g.voxel_size],
            "geometry": "assumed" if g.assumed else "from header"}


def describe_files(files: list[Path]) -> list[FileInfo]:
    """Describe every file; a file that cannot be read is reported, the others still are."""
    from mpcli.io.readers import read_scans

    out = []
    for f in files:
        try:
            out.append(FileInfo(f, [describe_scan(f, scan) for scan in read_scans(f)]))
        except MpError as exc:
            out.append(FileInfo(f, error=str(exc), exit_code=exc.exit_code))
    return out


def info_json(infos: list[FileInfo]) -> list[dict]:
    """Rows for ``--json``: one per frame, and one ``{"file", "status": "failed", "error"}`` per bad file."""
    rows = []
    for i in infos:
        if i.ok:
            rows += [{**r, "status": "ok"} for r in i.frames]
        else:
            rows.append({"file": str(i.path), "status": "failed", "error": i.error})
    return rows


# Table columns, most important first; the narrowest terminal drops from the end
# (the file name is never dropped nor cut: it wraps).
_COLUMNS = ("file", "R", "lines", "matrix", "slices", "coils", "format", "voxel mm", "recon", "geometry")


def _cells(row: dict) -> dict[str, str]:
    name = printable(Path(row["file"]).name + (f" [{row['frame']}]" if row["frame"] else ""))
    if row["mask"] == "lines":
        lines = f"{row['lines_acquired']}/{row['lines_total']} ({row['centre_lines']} centre)"
    else:
        lines = f"2-D {row['samples_acquired']}/{row['samples_total']}"
    return {"file": name, "format": row["format"], "slices": str(row["slices"]), "coils": str(row["coils"]),
            "matrix": "×".join(map(str, row["shape"][2:])), "recon": "×".join(map(str, row["recon_size"])),
            "R": f"{row['acceleration']:.2f}", "lines": lines,
            "voxel mm": "×".join(f"{v:g}" for v in row["voxel_mm"]), "geometry": row["geometry"]}


def info_table(infos: list[FileInfo], width: int):
    """A rich Table that fits ``width`` columns: low-priority columns are dropped, names never cut."""
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    rows = [(i, _cells(r)) for i in infos for r in i.frames] + [(i, None) for i in infos if not i.ok]
    rows.sort(key=lambda t: str(t[0].path))
    errors = any(not i.ok for i in infos)
    def build(cols: list[str], fold_name: bool) -> Table:
        notes = [f"R {ACCELERATION_KIND}."] if "R" in cols else []
        hidden = [c for c in _COLUMNS if c not in cols]
        if hidden and any(i.ok for i in infos):
            notes.append(f"Not shown, to fit {width} columns: {', '.join(hidden)} (widen the terminal or "
                         "use --json).")
        table = Table(title="mp info", caption="\n".join(notes) or None, caption_justify="left")
        for col in cols:
            wrap = col == "error" or (col == "file" and fold_name)
            table.add_column(col, overflow="fold", no_wrap=not wrap,
                             justify="right" if col in ("R", "slices", "coils") else "left")
        for info, cells in rows:
            if cells is None:
                reason = printable(info.error.removeprefix(f"{info.path}: "))
                values = [printable(info.path.name)] + ["" for _ in cols[1:-1]] + [reason]
            else:
                values = [cells[c] for c in cols if c != "error"] + ([""] if errors else [])
            table.add_row(*(Text(v) for v in values))  # names are data, never rich markup
        return table

    def natural(col: str) -> int:  # the width a column needs to show every cell whole
        if col == "error":  # wraps at spaces: its longest word
            return max([cell_len(col)] + [cell_len(w) for i in infos if not i.ok for w in i.error.split()])
        return max([cell_len(col)] + [cell_len(cells[col]) if cells else cell_len(printable(info.path.name))
                                      for info, cells in rows if cells is not None or col == "file"])

    for n in range(len(_COLUMNS), 0, -1):
        cols = list(_COLUMNS[:n]) + (["error"] if errors else [])
        if 1 + sum(natural(c) + 3 for c in cols) <= width:  # "│ cell │ cell │": 3 per column, 1 edge
            return build(cols, fold_name=False)
    return build(["file"] + (["error"] if errors else []), fold_name=True)  # a name wider than the terminal
