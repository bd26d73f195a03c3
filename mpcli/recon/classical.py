"""Classical reconstructions: zero-filled RSS, CG-SENSE and L1-wavelet CS.

- Zero-filled: x̂ = sqrt(Σ_c |F⁻¹ y_c|²), the RSS of the coil images of the
  k-space with zeros where nothing was acquired.
- CG-SENSE (Pruessmann 2001): solve (AᴴA + μI) x = Aᴴy by conjugate gradients
  (Tikhonov μ ≥ 0), batched over slices, pure torch, on any device.
- L1-wavelet CS (Lustig 2007): argmin_x ½‖A x − y‖² + λ‖Ψ x‖₁ (Ψ a Daubechies-4
  wavelet), solved by FISTA with cycle spinning (a random shift of the wavelet
  grid every iteration, as BART's ``pics``; see :mod:`mpcli.recon.wavelet`),
  slice by slice, its FFTs on CuPy when the data are on a CUDA GPU and CuPy is
  installed, else on the CPU, where as many slices run at once as torch has
  threads (the result does not depend on how many).

Scale for CS: λ only means the same thing across scans if the data have the
same scale. Each slice is divided by ``s`` = the 99th percentile of its
zero-filled RSS magnitude before the solve (so the bright tissue is ≈ 1), and
the image is multiplied by ``s`` afterwards. ``lam`` is thus relative to the
image intensity (λ ≈ 1e-3 … 1e-2 is the useful range).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from mpcli.device import from_xp, is_oom, resolve_device, sigpy_device_id, to_xp
from mpcli.errors import DeviceError
from mpcli.physics.coils import estimate_maps, rss
from mpcli.physics.fft import ifft2c
from mpcli.physics.sense import LinearOperator, Sense
from mpcli.recon.cg import conjugate_gradient
from mpcli.scan import Scan, center_crop

METHODS = ("zero-filled", "sense", "cs")
DEFAULT_LAM = 1e-3  # CS λ: best of 1e-3 / 3e-3 / 1e-2 on the LORAKS MPRAGE 4× and the MNI bench; with
# cycle spinning still the best of 1e-4 … 3e-2 on the MPRAGE at 4× (33.46 dB) and 6× (29.51; ad hoc, ninth session)
_OPTIONS = {"tikhonov", "iters", "tol", "lam", "calib_width"}


def zero_filled(kspace: torch.Tensor) -> torch.Tensor:
    """RSS of the zero-filled coil images: ``[S, C, H, W]`` → ``[S, H, W]`` float32."""
    return rss(ifft2c(kspace)).to(torch.float32)  # [S, H, W]


def cg_sense(
    y: torch.Tensor,
    A: LinearOperator,
    tikhonov: float = 0.0,
    iters: int = 30,
    tol: float = 1e-6,
) -> torch.Tensor:
    """CG-SENSE: solve (AᴴA + μI) x = Aᴴy for x ``[B, H, W]`` complex.

    ``y`` is ``[B, C, H, W]`` k-space, ``A`` a :class:`~mpcli.physics.sense.Sense`
    operator (or any operator with the same shapes), μ = ``tikhonov``. Started
    from x = 0, so pixels where every map is zero stay zero.
    """
    mu = float(tikhonov)

    def normal(x):
        return A.normal(x) + mu * x  # [B, H, W]

    x, _ = conjugate_gradient(normal, A.adjoint(y), iters=iters, tol=tol)
    return x


def l1_wavelet(
    kspace: torch.Tensor,
    maps: torch.Tensor,
    mask: torch.Tensor,
    lam: float,
    iters: int = 100,
    device: torch.device | str | None = None,
    cycle_spin: bool = True,
    start: torch.Tensor | None = None,
    mu: float = 0.0,
    eps: float | None = None,
) -> torch.Tensor:
    """L1-wavelet CS: argmin_x ½‖M(F S x − y)‖² + λ‖w ⊙ Ψ x‖₁ [+ μ/2‖x − x₀‖²], slice by slice.

    Args:
        kspace: ``[S, C, H, W]`` complex k-space.
        maps: ``[S, C, H, W]`` coil maps.
        mask: ``[S, 1, H, W]`` (or broadcastable) sampling mask, used as the
            data-consistency weights (unsampled points are ignored).
        lam: λ, relative to the image scale (see the module docstring).
        iters: proximal-gradient iterations.
        device: where to compute (default: the device of ``kspace``).
        cycle_spin: shift the wavelet grid at random every iteration; False
            gives sigpy's plain ``L1WaveletRecon`` solution. Random draws are
            seeded by the slice's index in ``kspace``, so a call is reproducible.
        start: ``[S, H, W]`` complex image x₀ at the scale of the data (e.g. a
            network's reconstruction) the iterations start from (default 0).
        mu: with ``start``, the weight of the proximity term μ/2‖x − x₀‖², relative
            to the scaled data term (‖AᴴA‖ ≈ 1 for unit-RSS maps); 0 adds none.
        eps: with ``start``, weight each wavelet coefficient's threshold by
            w_i = ε / (|(Ψ x₀)_i| + ε), x₀ scaled as the data (tissue ≈ 1): what the
            start image has is shrunk less (:class:`mpcli.recon.wavelet.WaveletL1`).
            None: w = 1.

    Returns:
        ``[S, H, W]`` complex64 images, on the device of ``kspace``, at the
        scale of the data.
    """
    from mpcli.recon.wavelet import solve  # lazy: imports PyWavelets

    out_device = kspace.device
    dev_id = sigpy_device_id(torch.device(device) if device is not None else out_device)
    mask = torch.broadcast_to(mask, (kspace.shape[0], 1, *kspace.shape[-2:]))  # [S, 1, H, W]

    def one(s: int) -> torch.Tensor:
        ksp = kspace[s].to(torch.complex64)  # [C, H, W]
        scale = float(torch.quantile(zero_filled(ksp[None]).flatten(), 0.99))
        scale = scale if scale > 0 else 1.0
        x0 = None if start is None else to_xp((start[s] / scale).to(torch.complex64), dev_id)  # [H, W]
        x = solve(to_xp(ksp / scale, dev_id), to_xp(maps[s].to(torch.complex64), dev_id),
                  to_xp(mask[s, 0].to(torch.float32), dev_id), lam, iters, seed=s, cycle_spin=cycle_spin,
                  device_id=dev_id, x0=x0, mu=mu, eps=eps)
        return from_xp(x, out_device).to(torch.complex64) * scale  # [H, W]

    slices = range(kspace.shape[0])
    workers = min(torch.get_num_threads(), len(slices)) if dev_id < 0 else 1
    if workers <= 1:
        return torch.stack([one(s) for s in slices])  # [S, H, W]
    # NumPy's FFTs and PyWavelets run single-threaded and release the GIL: one slice per CPU thread
    with ThreadPoolExecutor(workers) as pool:
        return torch.stack(list(pool.map(one, slices)))  # [S, H, W]


def reconstruct_classical(
    scan: Scan,
    method: str,
    maps: torch.Tensor | None = None,
    device: torch.device | str = "auto",
    batch_size: int = 8,
    **opts,
):
    """Reconstruct a scan with a classical method → ``[S, h, w]`` float32 magnitude.

    Args:
        scan: the acquisition.
        method: ``"zero-filled"``, ``"sense"`` (CG-SENSE) or ``"cs"`` (L1-wavelet).
        maps: ``[S, C, H, W]`` coil maps; ESPIRiT-estimated when needed and None.
        device: ``"auto"``, ``"cpu"``, ``"cuda[:N]"`` or a torch device.
        batch_size: slices per CG-SENSE batch (bounds memory).
        **opts: ``tikhonov`` (default 0.01), ``iters`` (30), ``tol`` (1e-6) for
            SENSE; ``lam`` (default :data:`DEFAULT_LAM`), ``iters`` (100) for CS;
            ``calib_width`` for the maps.

    Returns:
        NumPy ``[S, h, w]`` float32, cropped to ``scan.recon_size``.

    Raises:
        DeviceError: CUDA requested without a GPU, or GPU out of memory.
    """
    import numpy as np

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    unknown = set(opts) - _OPTIONS
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; known: {sorted(_OPTIONS)}")
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    try:
        image = _reconstruct(scan, method, maps, dev, batch_size, opts)  # [S, H, W]
    except Exception as exc:
        if is_oom(exc):
            raise DeviceError(
                scan.source, f"out of GPU memory in {method} reconstruction; use --device cpu"
            ) from exc
        raise
    image = center_crop(image, scan.recon_size)  # [S, h, w]
    return np.ascontiguousarray(image.detach().cpu().numpy().astype(np.float32))


def _reconstruct(scan, method, maps, dev, batch_size, opts) -> torch.Tensor:
    """The uncropped ``[S, H, W]`` magnitude of :func:`reconstruct_classical`."""
    kspace = scan.kspace.to(dev)  # [S, C, H, W]
    mask = scan.mask.to(dev)  # [S, 1, H, W]
    if method == "zero-filled":
        image = zero_filled(kspace)  # [S, H, W]
    else:
        if maps is None:
            maps = estimate_maps(kspace, mask, calib_width=opts.get("calib_width"))
        maps = maps.to(dev)  # [S, C, H, W]
        if method == "sense":
            parts = []
            for i in range(0, kspace.shape[0], batch_size):
                sl = slice(i, i + batch_size)
                A = Sense(maps[sl], mask[sl])
                parts.append(
                    cg_sense(
                        kspace[sl],
                        A,
                        tikhonov=opts.get("tikhonov", 0.01),
                        iters=opts.get("iters", 30),
                        tol=opts.get("tol", 1e-6),
                    ).abs()
                )
            image = torch.cat(parts)  # [S, H, W]
        else:
            image = l1_wavelet(
                kspace, maps, mask, lam=opts.get("lam", DEFAULT_LAM), iters=opts.get("iters", 100)
            ).abs()  # [S, H, W]
    return image
