"""Speed and memory of the real ``mp`` commands, each in its own process.

A simulated multi-coil volume is written as a fastMRI file in a temporary
folder (default 16 slices, 8 coils, 256×256, fastMRI ``random`` mask R = 4,
8 % centre). ``--fastmri-size`` writes what a fastMRI brain/knee raw file looks
like instead: k-space ``[35, 15, 640, 368]`` with a 2× oversampled readout and
a header whose recon matrix is 320×320, so the reader removes the oversampling
(the network and ESPIRiT see 320×368).

Timed, each as a child process ``python -m mpcli …`` (median of ``--repeats``;
``--adapt-repeats`` for adapt), formats ``h5`` only:

- ``mp reconstruct --method zero-filled`` (baseline),
- ``mp reconstruct --method cs``,
- ``mp adapt --kspace F --recon DIR`` (the whole command: reading, ESPIRiT coil
  maps, adaptation, reconstruction, writing),
- ``mp reconstruct --method adapted --model W`` (W written by the adapt run).

Each child runs through a small wrapper that, at exit, records its own peak
resident memory (``ru_maxrss`` of RUSAGE_SELF: the child's, not a cumulative
maximum over children) and on CUDA torch's peak allocated GPU memory.

In process, on the same file: ESPIRiT through ``mpcli.physics.coils`` versus
sigpy's own ``EspiritCalib`` (on CuPy arrays with ``sp.Device(0)`` on CUDA, on
NumPy otherwise), and the network's reconstruction throughput (slices/s,
coil maps precomputed, after a warm-up) — the figure the GPU target is about.

    python bench/speed.py                       # CPU default size
    python bench/speed.py --quick               # tiny, ~1 min on 2 cores
    python bench/speed.py --fastmri-size --device cuda
    python bench/speed.py --prior my_prior.safetensors --json speed.json

Without ``--prior`` the shipped meta-prior is used, or, when it is absent, a
randomly initialised network of the shipped configuration (timings do not
depend on the weights' values; the table says which was used).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

# Targets (seconds, MB, slices/s).
CPU_TARGETS = {"adapt_s": 120.0, "reconstruct_s": 20.0, "rss_mb": 3 * 1024.0}
GPU_TARGETS = {"adapt_s": 30.0, "network_slices_per_s": 100.0}

FASTMRI_SIZE = {"slices": 35, "coils": 15, "height": 640, "width": 368, "recon": (320, 320)}

# Runs `python -m mpcli ARGS` and writes the child's own peak RSS (bench/peak_rss.py, on
# its PYTHONPATH) and GPU peak as JSON to $MPBENCH_REPORT at exit (atexit runs after the
# CLI's SystemExit).
WRAPPER = r"""
import atexit, json, os, runpy, sys, time
from peak_rss import peak_rss_mb
_t0 = time.perf_counter()
def _report():
    rec = {"maxrss_mb": peak_rss_mb(), "inside_s": time.perf_counter() - _t0}
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            rec["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            rec["gpu_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    except Exception:
        pass
    cupy = sys.modules.get("cupy")
    try:
        if cupy is not None:
            rec["cupy_pool_mb"] = cupy.get_default_memory_pool().total_bytes() / 2**20
    except Exception:
        pass
    with open(os.environ["MPBENCH_REPORT"], "w") as fh:
        json.dump(rec, fh)
atexit.register(_report)
sys.argv = ["mp", *sys.argv[1:]]
runpy.run_module("mpcli", run_name="__main__", alter_sys=True)
"""


# ---------------------------------------------------------------- machine, prior
def machine() -> dict:
    """CPU model, cores, torch version, CUDA device name (if any)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "cuda_device": gpu, "load_1min": load}


def standin_prior(path: Path, seed: int = 0) -> Path:
    """A randomly initialised network of the shipped configuration, saved as weights."""
    import tomllib

    from mpcli.io.weights import save_weights
    from mpcli.recon.network import build_network

    with open(REPO / "mpcli" / "configs" / "meta_prior.toml", "rb") as fh:
        config = tomllib.load(fh)["network"]
    torch.manual_seed(seed)
    net = build_network(config)
    save_weights(path, {k: v.detach() for k, v in net.state_dict().items()},
                 {"config": config, "kind": "stand-in (random init)"})
    return path


def resolve_prior(prior: str | None, tmp: Path) -> tuple[Path, str]:
    """(weights path, label): ``--prior``, else the shipped prior, else a stand-in."""
    from mpcli.io.weights import SHIPPED_PRIOR

    if prior:
        return Path(prior), f"--prior {prior}"
    if SHIPPED_PRIOR.exists():
        return SHIPPED_PRIOR, "shipped meta-prior"
    return standin_prior(tmp / "standin_prior.safetensors"), "STAND-IN (random init; shipped prior absent)"


# ---------------------------------------------------------------- data
def phantom(h: int, w: int, slices: int) -> np.ndarray:
    """``[S, h, w]`` float32 Shepp–Logan slices (slightly varying per slice)."""
    import sigpy as sp

    base = np.abs(sp.shepp_logan((h, w))).astype(np.float32)
    return np.stack([base * (1.0 - 0.02 * (s % 10)) for s in range(slices)])


def write_volume(path: Path, slices: int, coils: int, height: int, width: int,
                 recon: tuple[int, int] | None = None, acceleration: float = 4.0, seed: int = 0) -> Path:
    """Simulate and write an undersampled fastMRI file.

    With ``recon`` = (h, w) and h < ``height`` the object fills the central h
    readout rows (a 2× oversampled readout when height = 2h) and the header's
    recon matrix is ``recon``.
    """
    from mpcli.data.simulate import coil_maps, simulate_kspace, smooth_phase
    from mpcli.io.fastmri import write_fastmri
    from mpcli.io.ismrmrd import make_header
    from mpcli.physics.masks import make_mask
    from mpcli.scan import Geometry

    rng = np.random.default_rng(seed)
    rh, rw = recon or (height, width)
    obj_h, obj_w = min(rh, height), min(rw, width)
    images = np.zeros((slices, height, width), np.float32)  # [S, H, W]
    top, left = (height - obj_h) // 2, (width - obj_w) // 2
    images[:, top:top + obj_h, left:left + obj_w] = phantom(obj_h, obj_w, slices)
    maps = coil_maps(coils, (height, width), rng)  # [C, H, W], one coil array per scan
    mask = make_mask("random", (height, width), acceleration, 0.08, seed).reshape(-1).numpy()  # [W]
    kspace = np.empty((slices, coils, height, width), np.complex64)  # [S, C, H, W]
    for s in range(slices):
        x = images[s] * np.exp(1j * smooth_phase((height, width), rng, 1.0))
        kspace[s] = simulate_kspace(x, maps, 0.01, rng) * mask
    geometry = Geometry.default(slices, (1.0, 1.0, 3.0))
    header = make_header((height, width), (rh, rw), geometry.voxel_size, slices)
    return write_fastmri(path, kspace, mask=mask, geometry=geometry, header_xml=header,
                         attrs={"acquisition": "SIMULATED_SPEED"})


# ---------------------------------------------------------------- child processes
def run_cli(args: list[str], workdir: Path, timeout: float | None = None) -> dict:
    """Run ``mp ARGS`` in a fresh process; wall seconds, exit code, its peak memory."""
    report = workdir / f"report_{time.monotonic_ns()}.json"
    path = os.pathsep.join([str(REPO), str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, MPBENCH_REPORT=str(report), PYTHONPATH=path)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *args], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    seconds = time.perf_counter() - t0
    rec = json.loads(report.read_text()) if report.exists() else {}
    rec.update(seconds=seconds, rc=proc.returncode)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        rec["error"] = " | ".join(tail)
    return rec


def timed(name: str, make_args, repeats: int, workdir: Path, slices: int) -> dict:
    """Median over ``repeats`` runs of ``mp make_args(i)``; peak memory = max over runs."""
    runs = []
    for i in range(repeats):
        rec = run_cli(make_args(i), workdir)
        runs.append(rec)
        print(f"  {name} run {i + 1}/{repeats}: {rec['seconds']:.1f} s, rc {rec['rc']}"
              + (f"  ({rec['error']})" if "error" in rec else ""), file=sys.stderr, flush=True)
        if rec["rc"] != 0:
            break
    ok = all(r["rc"] == 0 for r in runs)
    med = statistics.median(r["seconds"] for r in runs)
    out = {"name": name, "ok": ok, "repeats": len(runs), "seconds": med, "slices_per_s": slices / med,
           "rss_mb": max(r.get("maxrss_mb", float("nan")) for r in runs),
           "error": next((r["error"] for r in runs if "error" in r), "")}
    for key in ("gpu_peak_mb", "gpu_reserved_mb", "cupy_pool_mb"):
        vals = [r[key] for r in runs if key in r]
        if vals:
            out[key] = max(vals)
    return out


def command_benchmarks(kspace: Path, prior: Path, args, workdir: Path, slices: int) -> list[dict]:
    """The four commands (see the module docstring)."""
    common = ["--format", "h5", "--device", args.device, "--batch", str(args.batch)]
    out = lambda tag, i: str(workdir / f"{tag}_{i}")
    rows = [
        timed("reconstruct zero-filled", lambda i: ["reconstruct", str(kspace), "--out", out("zf", i),
                                                    "--method", "zero-filled", *common],
              args.repeats, workdir, slices),
        timed("reconstruct cs", lambda i: ["reconstruct", str(kspace), "--out", out("cs", i), "--method", "cs",
                                           *common], args.repeats, workdir, slices),
    ]
    adapt_extra = ["--steps", str(args.adapt_steps)] if args.adapt_steps else []
    rows.append(timed("adapt (whole command)",
                      lambda i: ["adapt", "--kspace", str(kspace), "--recon", out("adapt", i), "--prior", str(prior),
                                 "--format", "h5", "--device", args.device, *adapt_extra],
                      args.adapt_repeats, workdir, slices))
    weights = workdir / "adapt_0" / "adapted.safetensors"
    if not weights.exists():  # adapt failed: time the network on the prior instead
        weights = prior
    rows.append(timed("reconstruct adapted", lambda i: ["reconstruct", str(kspace), "--out", out("net", i),
                                                        "--method", "adapted", "--model", str(weights), *common],
                      args.repeats, workdir, slices))
    base = rows[0]["seconds"]
    for r in rows:
        r["ratio"] = r["seconds"] / base
    return rows


# ---------------------------------------------------------------- in process
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def espirit_benchmark(scan, device: torch.device, n: int) -> dict:
    """Seconds for ESPIRiT on ``n`` slices: mpcli's ``estimate_maps`` (coarse grid) vs sigpy used
    directly with its defaults (full grid, 100 power iterations)."""
    import sigpy as sp
    from sigpy.mri.app import EspiritCalib

    from mpcli.device import cupy_available, sigpy_device_id
    from mpcli.physics.coils import calibration_width, estimate_maps

    k = scan.kspace[:n].to(device)  # [n, C, H, W]
    m = scan.mask[:n]  # [n, 1, H, W] (CPU: only read for the calibration width)
    calib = min(calibration_width(m), *k.shape[-2:])
    kernel = max(2, min(6, calib // 2))
    estimate_maps(k[:1], m[:1], device=device)  # warm-up (CUDA kernels and plans are built on first use)
    _sync(device)
    t0 = time.perf_counter()
    maps = estimate_maps(k, m, device=device)  # [n, C, H, W]
    _sync(device)
    ours = time.perf_counter() - t0
    dev_id = sigpy_device_id(device)
    xp = sp.Device(dev_id).xp
    arrays = [xp.asarray(k[s].cpu().numpy()) for s in range(n)]  # host→device copies outside the timing
    _sync(device)  # cudaDeviceSynchronize: CuPy's stream too
    t0 = time.perf_counter()
    for a in arrays:
        EspiritCalib(a, calib_width=calib, kernel_width=kernel, thresh=0.02, crop=0.95, max_iter=100,
                     device=sp.Device(dev_id), show_pbar=False).run()
    _sync(device)
    direct = time.perf_counter() - t0
    return {"slices": n, "mpcli_s": ours, "sigpy_direct_s": direct,
            "path": "CuPy (GPU)" if dev_id >= 0 else ("NumPy (CPU; CuPy absent)" if device.type == "cuda"
                                                     and not cupy_available() else "NumPy (CPU)"),
            "maps": maps}


def network_benchmark(scan, maps: torch.Tensor, prior: Path, device: torch.device, batch: int,
                      repeats: int) -> dict:
    """Network reconstruction throughput on the slices that ``maps`` cover."""
    from mpcli.io.weights import load_model
    from mpcli.recon.apply import reconstruct_network

    n = maps.shape[0]
    sub = dataclasses.replace(scan, kspace=scan.kspace[:n], mask=scan.mask[:n])
    model, _ = load_model(prior, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reconstruct_network(model, sub, maps, device, batch=batch)  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        reconstruct_network(model, sub, maps, device, batch=batch)
        _sync(device)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    out = {"slices": n, "batch": batch, "seconds": med, "slices_per_s": n / med}
    if device.type == "cuda":
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


# ---------------------------------------------------------------- report
def checks(rows: list[dict], net: dict, device: torch.device) -> list[tuple[str, str, str]]:
    """(target, measured, PASS/FAIL) for the device's targets."""
    by = {r["name"]: r for r in rows}
    verdict = lambda ok: "PASS" if ok else "FAIL"
    if device.type == "cuda":
        a = by["adapt (whole command)"]
        return [
            (f"GPU adapt < {GPU_TARGETS['adapt_s']:.0f} s", f"{a['seconds']:.1f} s",
             verdict(a["ok"] and a["seconds"] < GPU_TARGETS["adapt_s"])),
            (f"GPU network reconstruction ≥ {GPU_TARGETS['network_slices_per_s']:.0f} slices/s",
             f"{net['slices_per_s']:.1f} slices/s", verdict(net["slices_per_s"] >= GPU_TARGETS["network_slices_per_s"])),
        ]
    a, r = by["adapt (whole command)"], by["reconstruct adapted"]
    rss = max(x["rss_mb"] for x in rows)
    return [
        (f"CPU adapt < {CPU_TARGETS['adapt_s']:.0f} s", f"{a['seconds']:.1f} s",
         verdict(a["ok"] and a["seconds"] < CPU_TARGETS["adapt_s"])),
        (f"CPU reconstruct (adapted) < {CPU_TARGETS['reconstruct_s']:.0f} s", f"{r['seconds']:.1f} s",
         verdict(r["ok"] and r["seconds"] < CPU_TARGETS["reconstruct_s"])),
        (f"CPU peak RSS < {CPU_TARGETS['rss_mb'] / 1024:.0f} GB (every command)", f"{rss:.0f} MB",
         verdict(all(x["ok"] for x in rows) and rss < CPU_TARGETS["rss_mb"])),
    ]


def render(info: dict, setting: dict, rows: list[dict], esp: dict, net: dict,
           verdicts: list[tuple[str, str, str]]) -> str:
    gpu = any("gpu_peak_mb" in r for r in rows)
    lines = [
        "## mp speed benchmark", "",
        (f"Machine: {info['cpu']}, {info['cores']} cores (load {info['load_1min']} at the end); torch {info['torch']}, Python {info['python']}; "
        f"CUDA device: {info['cuda_device'] or 'none'}"),
        (f"Data: {setting['slices']} slices × {setting['coils']} coils × {setting['height']}×{setting['width']} "
        f"k-space (recon {setting['recon'][0]}×{setting['recon'][1]}), random mask R 4; device {setting['device']}; "
        f"weights: {setting['prior']}; adapt steps: {setting['adapt_steps'] or 'default (40, early stopping)'}"),
        "",
        "| command | ok | runs | seconds (median) | slices/s | × zero-filled | peak RSS (MB) |"
        + (" peak GPU torch (MB) | CuPy pool at exit (MB) |" if gpu else ""),
        "|---|---|---|---|---|---|---|" + ("---|---|" if gpu else ""),
    ]
    for r in rows:
        line = (f"| {r['name']} | {'yes' if r['ok'] else 'NO'} | {r['repeats']} | {r['seconds']:.2f} | "
                f"{r['slices_per_s']:.2f} | {r['ratio']:.2f} | {r['rss_mb']:.0f} |")
        if gpu:
            line += f" {r.get('gpu_peak_mb', float('nan')):.0f} | {r.get('cupy_pool_mb', float('nan')):.0f} |"
        lines.append(line)
    lines += ["", (f"ESPIRiT on {esp['slices']} slice(s) ({esp['path']}): mpcli estimate_maps (torch, 64² "
              f"grid) {esp['mpcli_s']:.2f} s ({esp['mpcli_s'] / esp['slices']:.3f} s/slice), sigpy EspiritCalib "
              f"directly (full grid, 100 iterations) {esp['sigpy_direct_s']:.2f} s "
              f"({esp['sigpy_direct_s'] / esp['slices']:.3f} s/slice): "
              f"{esp['sigpy_direct_s'] / max(esp['mpcli_s'], 1e-9):.1f}× faster"),
              f"Network reconstruction in process ({net['slices']} slices, batch {net['batch']}, maps precomputed): "
              f"{net['seconds']:.3f} s = {net['slices_per_s']:.1f} slices/s"
              + (f", peak GPU {net['gpu_peak_mb']:.0f} MB" if "gpu_peak_mb" in net else ""),
              "", "| target | measured | result |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {v} |" for t, m, v in verdicts]
    failed = [r for r in rows if not r["ok"]]
    for r in failed:
        lines.append(f"\n{r['name']} failed: {r['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=int, default=16)
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--size", type=int, default=256, help="square matrix H = W")
    p.add_argument("--fastmri-size", action="store_true",
                   help="k-space [35, 15, 640, 368], recon 320×320 (readout oversampling removed by the reader)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (passed to every command)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each reconstruct command")
    p.add_argument("--adapt-repeats", type=int, default=1)
    p.add_argument("--adapt-steps", type=int, default=None, help="mp adapt --steps (default: the command's)")
    p.add_argument("--batch", type=int, default=4, help="slices per network batch (mp reconstruct --batch)")
    p.add_argument("--espirit-slices", type=int, default=None, help="slices for the in-process ESPIRiT comparison "
                   "(default: all on CUDA, 4 on CPU)")
    p.add_argument("--prior", default=None, help="weights to adapt from (default: shipped, else a stand-in)")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke run (2 slices, 4 coils, 64×64)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    p.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = p.parse_args(argv)
    if args.quick:
        args.slices, args.coils, args.size = 2, 4, 64
        args.repeats, args.adapt_repeats = 1, 1
        args.adapt_steps = args.adapt_steps or 3
    from mpcli.device import resolve_device
    from mpcli.io.readers import read_scans

    device = resolve_device(args.device)
    args.device = str(device)
    if args.fastmri_size:
        setting = dict(FASTMRI_SIZE)
    else:
        setting = {"slices": args.slices, "coils": args.coils, "height": args.size, "width": args.size,
                   "recon": (args.size, args.size)}
    tmp_ctx = tempfile.TemporaryDirectory(prefix="mp_speed_") if args.keep is None else None
    workdir = Path(tmp_ctx.name) if tmp_ctx else args.keep.resolve()  # children run elsewhere
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        prior, label = resolve_prior(args.prior, workdir)
        t0 = time.perf_counter()
        kspace = write_volume(workdir / "volume.h5", setting["slices"], setting["coils"], setting["height"],
                              setting["width"], setting["recon"])
        print(f"wrote {kspace.name} ({kspace.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr, flush=True)
        setting.update(device=args.device, prior=label, adapt_steps=args.adapt_steps)
        rows = command_benchmarks(kspace, prior, args, workdir, setting["slices"])
        scan = read_scans(kspace)[0]
        n_esp = args.espirit_slices or (scan.shape[0] if device.type == "cuda" else min(4, scan.shape[0]))
        esp = espirit_benchmark(scan, device, min(n_esp, scan.shape[0]))
        net = network_benchmark(scan, esp.pop("maps"), prior, device, args.batch, max(args.repeats, 1))
        verdicts = checks(rows, net, device)
        if device.type == "cuda" and not args.fastmri_size:
            verdicts = [(t + " (target is for --fastmri-size)", m, v) for t, m, v in verdicts]
        print(render(machine(), setting, rows, esp, net, verdicts))
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(), "setting": setting, "commands": rows,
                                             "espirit": esp, "network": net,
                                             "checks": [dict(zip(("target", "measured", "result"), v))
                                                        for v in verdicts]}, indent=2, default=str))
        if not all(r["ok"] for r in rows):
            return 1
        return 0 if all(v[2] == "PASS" for v in verdicts) else 2
    finally:
        if tmp_ctx:
            tmp_ctx.cleanup()


if __name__ == "__main__":
    sys.exit(main())
