"""Learning curve of a curriculum run: validation PSNR against training wall-clock hours.

    python bench/plot_training.py train/prior_log.jsonl bench/results/prior_curve.png

Reads the JSONL log of :mod:`mpcli.meta.curriculum` (``baseline``, ``train``, ``val``,
``amend`` records); draws the network's mean validation PSNR (one colour per stage; the
averaged θ̄ too where the run keeps one, and in meta stages θ̄ after the inner steps;
each validation frame apart), the tuned
L1-wavelet CS and zero-filled means as horizontal lines, where the recipe was amended, and
the training loss below (L1 on a log axis; −PSNR dB on the right axis after an amend to it).
Prints the last validation record and the per-step cost of each stage (median s/step).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def main(log: str, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    bases = [r for r in recs if r["kind"] == "baseline"]
    vals = [r for r in recs if r["kind"] == "val"]
    frames = list(dict.fromkeys(r.get("frame", "true") for r in vals))
    train = [r for r in recs if r["kind"] == "train"]
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=(2, 1))
    for stage in dict.fromkeys(r["stage"] for r in vals):
        for frame in frames:
            pts = [(r["wall_h"], r["psnr_mean"]) for r in vals if r["stage"] == stage and r.get("frame", "true") == frame]
            if pts:
                where = f", {frame} maps" if len(frames) > 1 else ""
                ax.plot(*zip(*pts), "o-" if frame == "true" else "D-", label=f"network, stage {stage}{where}")
    for i, frame in enumerate(frames):
        averaged = [(r["wall_h"], r["psnr_ema_mean"]) for r in vals
                    if "psnr_ema_mean" in r and r.get("frame", "true") == frame]
        if averaged:
            ax.plot(*zip(*averaged), "s--", color="tab:green", ms=4,
                    label="averaged θ̄ (what is exported)" if i == 0 else None)
        adapted = [(r["wall_h"], r["psnr_adapted_mean"]) for r in vals
                   if "psnr_adapted_mean" in r and r.get("frame", "true") == frame]
        if adapted:
            ax.plot(*zip(*adapted), "^:", color="tab:red", ms=5,
                    label="θ̄ after the inner steps (meta stages)" if i == 0 else None)
    end = max([r["wall_h"] for r in recs if "wall_h" in r] or [1.0])
    for i, b in enumerate(bases):  # each baseline holds until the next one (a change of frame)
        x0, x1 = b.get("wall_h", 0.0) if i else 0.0, bases[i + 1]["wall_h"] if i + 1 < len(bases) else end
        where = f" ({b.get('frame', 'true')} maps)" if len(bases) > 1 else ""
        ax.hlines(b["cs_mean"], x0, x1, color="k", ls="--", label=f"L1-wavelet CS, λ tuned{where}")
        ax.hlines(b["zf_mean"], x0, x1, color="grey", ls=":", label=f"zero-filled (Aᴴy){where}" if i == 0 else None)
    ax.set_ylabel("validation PSNR (dB), mean of tasks")
    ax.legend(fontsize=8)
    ax.set_title("scan-like prior: held-out validation anatomy")
    amends = [r for r in recs if r["kind"] == "amend"]
    for a in amends:
        what = ", ".join(a["changes"])
        for axis in (ax, bx):
            axis.axvline(a["wall_h"], color="tab:red", lw=0.8, ls="-.")
        ax.annotate(f"recipe amended ({what})", (a["wall_h"], ax.get_ylim()[0]), xytext=(-3, 4),
                    textcoords="offset points", fontsize=7, color="tab:red", va="bottom", ha="right", rotation=90)
    # the loss changes meaning at an amend that changes it: L1 (log axis) before, −PSNR dB (right axis) after
    switch = next((a["wall_h"] for a in amends if "loss" in a["changes"]), float("inf"))
    cx = bx.twinx() if switch < float("inf") else None
    for stage in dict.fromkeys(r["stage"] for r in train):
        pts = [(r["wall_h"], r["loss"]) for r in train if r["stage"] == stage and r["wall_h"] <= switch]
        if pts:
            bx.plot(*zip(*pts), lw=0.8, label=stage)
        after = [(r["wall_h"], r["loss"]) for r in train if r["stage"] == stage and r["wall_h"] > switch]
        if after and cx is not None:
            cx.plot(*zip(*after), lw=0.8, color="tab:purple", label=f"{stage} (−PSNR)")
    bx.set_yscale("log")
    bx.legend(fontsize=8, title="stage", title_fontsize=8, loc="upper left")
    bx.set_xlabel("training wall-clock hours (1 thread, shared machine)")
    bx.set_ylabel("training L1 loss")
    if cx is not None:
        cx.set_ylabel("training −PSNR loss (dB)", fontsize=8)
        cx.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")
    if vals:
        last = vals[-1]
        print(f"last validation: stage {last['stage']} step {last['step']} at {last['wall_h']:.2f} h: "
              f"{last['psnr_mean']:.2f} dB ({last.get('gap_to_cs_db', float('nan')):+.2f} dB vs CS)"
              + (f", averaged θ̄ {last['psnr_ema_mean']:.2f} dB" if "psnr_ema_mean" in last else "")
              + (f", after the inner steps {last['psnr_adapted_mean']:.2f} dB" if "psnr_adapted_mean" in last else ""))
    for stage in dict.fromkeys(r["stage"] for r in train):
        s = [r["s_per_step"] for r in train if r["stage"] == stage]
        print(f"stage {stage}: median {statistics.median(s):.2f} s/step over {len(s)} log records")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python bench/plot_training.py LOG.jsonl OUT.png")
    main(sys.argv[1], sys.argv[2])
