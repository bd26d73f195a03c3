"""Report figures (PNG, matplotlib Agg, written atomically).

- :func:`figure`: montage — row 1 the reference and each method, row 2 the
  absolute error |method − reference| of each, all error maps at one common
  scale; PSNR / SSIM under each image.
- :func:`loss_curve`: the self-validation loss early stopping decides on, and the
  training loss, against steps.

Figures are built on a bare ``matplotlib.figure.Figure`` (no pyplot, no global
state, no display needed) and saved to a temporary name in the destination
folder, then moved into place with ``os.replace``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mpcli.errors import OutputError
from mpcli.scan import center_crop


def _image(x, size: tuple[int, int] | None = None) -> np.ndarray:
    """Magnitude 2-D float64 image: middle slice of a volume, crop to ``size``."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.abs(np.asarray(x)).astype(np.float64)
    while a.ndim > 2:
        a = a[a.shape[0] // 2]
    if a.ndim != 2:
        raise ValueError(f"expected an image [H, W] or a volume [S, H, W], got shape {a.shape}")
    return center_crop(a, size) if size is not None else a


def _save(fig, path: str | Path) -> Path:
    """Save ``fig`` as PNG to ``path`` atomically (temp file + ``os.replace``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from mpcli.io.paths import expect_file_to_write

    path = expect_file_to_write(path, "a PNG file", "figure.png", error=OutputError)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    FigureCanvasAgg(fig)
    try:
        fig.savefig(tmp, format="png", dpi=fig.dpi)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(path, f"cannot write the figure ({err.strerror or err})") from None
    return path


def _caption(m: Mapping[str, float] | None) -> str:
    if not m:
        return ""
    lower = {k.lower(): v for k, v in m.items()}
    parts = []
    if "psnr" in lower:
        parts.append(f"PSNR {lower['psnr']:.2f} dB")
    if "ssim" in lower:
        parts.append(f"SSIM {lower['ssim']:.4f}")
    return "\n".join(parts)


def figure(
    reference,
    images: Mapping[str, object],
    path: str | Path,
    metrics: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    """Write a comparison montage PNG and return its path.

    Args:
        reference: ``[H, W]`` image or ``[S, H, W]`` volume (middle slice shown);
            complex values are shown as magnitude.
        images: method name → image/volume (centre-cropped to the reference).
        path: the PNG to write (atomically).
        metrics: method name → ``{"psnr": dB, "ssim": …}`` written under the image.

    Row 1 shares the grey scale [0, max(reference)]; row 2 shows
    |image − reference| with one ``vmax`` for all maps (the largest 99.5th
    percentile over the methods) and one colour bar.
    """
    from matplotlib.figure import Figure

    metrics = metrics or {}
    ref = _image(reference)
    imgs = {name: _image(img, ref.shape) for name, img in images.items()}
    for name, img in imgs.items():
        if img.shape != ref.shape:
            raise ValueError(f"{name}: image {img.shape} is smaller than the reference {ref.shape}")
    errs = {name: np.abs(img - ref) for name, img in imgs.items()}
    vmax_img = float(ref.max()) or 1.0
    vmax_err = max((float(np.percentile(e, 99.5)) for e in errs.values()), default=0.0) or 1.0

    ncol = 1 + len(imgs)
    h, w = ref.shape
    cell = 2.6
    fig = Figure(figsize=(cell * ncol * max(w / h, 0.5), 2 * cell + 0.9), dpi=100, layout="constrained")
    axes = fig.subplots(2, ncol, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].imshow(ref, cmap="gray", vmin=0, vmax=vmax_img)
    axes[0, 0].set_title("Reference", fontsize=10)
    axes[1, 0].axis("off")
    im_err = None
    for col, name in enumerate(imgs, start=1):
        axes[0, col].imshow(imgs[name], cmap="gray", vmin=0, vmax=vmax_img)
        axes[0, col].set_title(name, fontsize=10)
        axes[0, col].set_xlabel(_caption(metrics.get(name)), fontsize=9)
        im_err = axes[1, col].imshow(errs[name], cmap="inferno", vmin=0, vmax=vmax_err)
        axes[1, col].set_xlabel(f"max {errs[name].max():.3g}", fontsize=8)
    if im_err is not None:  # the common error scale, in the empty cell under the reference
        cax = axes[1, 0].inset_axes((0.62, 0.05, 0.08, 0.9))
        bar = fig.colorbar(im_err, cax=cax)
        bar.set_label("|error| (common scale)", fontsize=9)
        cax.yaxis.set_ticks_position("left")
        cax.yaxis.set_label_position("left")
    return _save(fig, path)


def loss_curve_figure(
    steps: Sequence[float],
    train_loss: Sequence[float],
    val_loss: Sequence[float] | None,
    best_step: float | None = None,
    stop_note: str | None = None,
):
    """The figure behind :func:`loss_curve` (a bare matplotlib ``Figure``).

    Top panel: the self-validation loss — the loss on acquired k-space held out
    from training, on which early stopping decides — on its own linear axis,
    scaled to its own range, so a change of a fraction of a percent is visible;
    the best step is marked and labelled with its change from step 0 (the
    prior). Bottom panel: the training loss (linear, its own scale). No legend
    sits on the curves: each panel is one curve, named by its axis label.
    """
    from matplotlib.figure import Figure

    steps_a = np.asarray(steps, dtype=float)
    train = np.asarray(train_loss, dtype=float)
    if train.shape != steps_a.shape:
        raise ValueError(f"train_loss has {train.size} values for {steps_a.size} steps")
    val = None
    if val_loss is not None:
        val = np.asarray(val_loss, dtype=float)
        if val.shape != steps_a.shape:
            raise ValueError(f"val_loss has {val.size} values for {steps_a.size} steps")
    fig = Figure(figsize=(6.4, 5.6), dpi=100, layout="constrained")
    ax_val, ax_train = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    title = "mp adapt: early stopping on the self-validation loss"
    ok = np.isfinite(val) if val is not None else np.zeros(steps_a.shape, bool)
    if ok.any():
        v, s = val[ok], steps_a[ok]
        ax_val.plot(s, v, "o-", ms=4, color="tab:orange")
        lo, hi = float(v.min()), float(v.max())
        pad = 0.12 * (hi - lo) if hi > lo else 0.05 * abs(hi) or 1.0
        ax_val.set_ylim(lo - pad, hi + pad)
        if best_step is not None and np.any(s == best_step):
            best = float(v[s == best_step][0])
            change = f", {100 * (best - v[0]) / v[0]:+.2f} % vs step 0" if v[0] != 0 and s[0] != best_step else ""
            ax_val.plot([best_step], [best], "*", ms=14, color="tab:red", zorder=3)
            ax_val.text(0.98, 0.95, f"kept: step {best_step:g}{change}", transform=ax_val.transAxes,
                        ha="right", va="top", fontsize=9, color="tab:red")
            title += f"\nkept step {best_step:g} of {s[-1]:g}" + (f"; {stop_note}" if stop_note else "")
    else:
        ax_val.text(0.5, 0.5, "no self-validation loss measured", ha="center", va="center",
                    transform=ax_val.transAxes)
    ax_val.set_ylabel("self-validation loss\n(held-out k-space)")
    ax_train.plot(steps_a, train, color="tab:blue")
    ax_train.set_ylabel("training loss")
    ax_train.set_xlabel("adaptation step (0 = the prior)")
    for ax in (ax_val, ax_train):
        ax.grid(True, alpha=0.3)
        if best_step is not None:
            ax.axvline(best_step, color="tab:red", ls="--", lw=1)
    fig.suptitle(title, fontsize=10)
    return fig


def loss_curve(
    steps: Sequence[float],
    train_loss: Sequence[float],
    val_loss: Sequence[float] | None,
    path: str | Path,
    best_step: float | None = None,
    stop_note: str | None = None,
) -> Path:
    """Plot the self-validation and training losses against steps (PNG); return its path.

    ``val_loss`` may be None or contain NaN where it was not measured;
    ``best_step`` is the early-stopping choice and ``stop_note`` why the run
    ended, for the title (see :func:`loss_curve_figure`).
    """
    return _save(loss_curve_figure(steps, train_loss, val_loss, best_step, stop_note), path)
