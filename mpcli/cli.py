"""``mp``: thin Typer commands over the library.

Each command parses its options, calls one library function, renders the
result (rich table, or ``--json`` on stdout) and maps typed errors to the exit
codes of :mod:`mpcli.errors`. Heavy imports happen inside the commands so that
``mp --help`` is instant.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console

from mpcli import __version__
from mpcli.errors import (
    EXIT_CODES,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    MpError,
    printable,
)

_EXIT_TABLE = "\n\n".join(f"{code}  {text}" for code, text in EXIT_CODES.items())

app = typer.Typer(
    name="mp",
    help="Meta-prior MRI reconstruction: adapt a meta-learned network to your scanner's "
    "undersampled k-space without ground truth, reconstruct, write NIfTI/DICOM/HDF5.",
    epilog=f"Exit codes:\n\n{_EXIT_TABLE}",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
err = Console(stderr=True)
console = Console()


@contextmanager
def _guard():
    """Turn library errors into one line on stderr and the documented exit code.

    Library warnings (numpy overflow on a malformed file, deprecations) are not
    shown: every problem reaches the user as one ``mp: error:`` line instead.
    ``MP_DEBUG=1`` shows them, and tracebacks.
    """
    import warnings

    try:
        with warnings.catch_warnings():
            if not os.environ.get("MP_DEBUG"):
                warnings.simplefilter("ignore")
            yield
    except MpError as exc:
        err.print(f"mp: error: {printable(exc)}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("mp: interrupted", markup=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except typer.Exit:
        raise
    except Exception as exc:
        if os.environ.get("MP_DEBUG"):
            raise
        if isinstance(exc, MemoryError):
            err.print("mp: error: not enough memory (try fewer slices per batch or a smaller input)",
                      markup=False, highlight=False)
            raise typer.Exit(EXIT_INPUT) from None
        msg = printable(" ".join(f"{exc.__class__.__name__}: {exc}".split()))[:300]
        err.print(f"mp: internal error: {msg} (set MP_DEBUG=1 for a traceback)", markup=False,
                  highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERNAL) from None


def _version(value: bool):
    if value:
        console.print(f"mp {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """Meta-prior MRI reconstruction."""


def _progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal)


def _cell(value):
    """A table cell shown as plain text: names are data, never rich markup."""
    from rich.text import Text

    return Text(printable(value))


def _outcome_table(outcomes, title: str):
    from rich.table import Table

    table = Table(title=title)
    for col in ("input", "status", "outputs", "seconds", "error"):
        table.add_column(col)
    for o in outcomes:
        table.add_row(_cell(o.input.name), o.status, str(len(o.outputs)), f"{o.seconds:.1f}", _cell(o.error))
    return table


def _batch_exit(outcomes) -> int:
    """0 when all succeeded; the shared code when all failed alike; else 7 (partial)."""
    failed = [o for o in outcomes if o.status == "failed"]
    if not failed:
        return EXIT_OK
    codes = {o.exit_code for o in failed}
    if len(failed) == len(outcomes) and len(codes) == 1:
        return codes.pop()
    return EXIT_PARTIAL


def _outcomes_json(outcomes) -> str:
    return json.dumps([{"input": str(o.input), "status": o.status, "error": o.error,
                        "outputs": [str(p) for p in o.outputs], "seconds": round(o.seconds, 3)}
                       for o in outcomes], indent=2)


@app.command("reconstruct")
def reconstruct_cli(
    inputs: list[Path] = typer.Argument(..., help="k-space files (fastMRI or ISMRMRD HDF5, Siemens twix .dat) or folders."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output folder (created)."),
    method: str = typer.Option("cs", help="zero-filled | sense | cs | meta | adapted"),
    formats: list[str] = typer.Option(["h5", "nifti"], "--format", "-f", help="h5 | nifti | dicom (repeatable)."),
    model: Path | None = typer.Option(None, help="Network weights for --method adapted (or meta)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    cs_lam: float = typer.Option(1e-3, help="L1-wavelet weight for --method cs (scale-normalised data)."),
    batch: int = typer.Option(4, min=1, help="Slices per network batch (halved on GPU out-of-memory)."),
    resume: bool = typer.Option(False, help="Skip inputs whose outputs and manifest already match."),
    overwrite: bool = typer.Option(False, help="Redo inputs whose outputs exist."),
    shard: str | None = typer.Option(None, help="i/n: only the i-th of n deterministic shards."),
    anonymize: bool = typer.Option(False, help="Blank patient and study identifiers in DICOM."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
):
    """Reconstruct k-space files into images (HDF5, NIfTI, DICOM).

    Example: mp reconstruct scans/ --out recon/ --method cs --format nifti --format dicom
    """
    with _guard():
        from mpcli.batch import (
            check_output_dir,
            collect_inputs,
            output_stems,
            parse_shard,
            run_batch,
            select_shard,
        )
        from mpcli.device import resolve_device
        from mpcli.errors import InputError, UsageError
        from mpcli.reconstruct import (
            FORMATS,
            METHODS,
            ReconOptions,
            reconstruct_scan,
            write_outputs,
        )

        if method not in METHODS:
            raise UsageError(None, f"--method must be one of {', '.join(METHODS)}, got {method!r}")
        bad = [f for f in formats if f not in FORMATS]
        if bad:
            raise UsageError(None, f"--format must be among {', '.join(FORMATS)}, got {bad[0]!r}")
        parse_shard(shard)
        check_output_dir(out_dir, inputs)
        files = collect_inputs(inputs)
        if not files:
            raise InputError(None, "no k-space files (.h5, .hdf5, .mrd) found in the given folders")
        stems = output_stems(files)
        files = select_shard(files, parse_shard(shard))
        dev = resolve_device(device)
        net, model_sha = _load_network(method, model, dev)
        options = ReconOptions(method=method, formats=tuple(dict.fromkeys(formats)), cs_lam=cs_lam,
                               batch=batch, anonymize=anonymize)

        def process(scan, stem):
            recon = reconstruct_scan(scan, options, dev, model=net, model_sha256=model_sha)
            return write_outputs(recon, out_dir, stem, options)

        with _progress() as progress:
            task = progress.add_task(f"reconstruct ({method})", total=len(files))
            outcomes = run_batch(files, out_dir, process, model_sha256=model_sha,
                                 options=options.manifest(), formats=options.formats, resume=resume,
                                 overwrite=overwrite, stems=stems, on_file=lambda o: progress.advance(task))
        _report(outcomes, as_json, "mp reconstruct")
        raise typer.Exit(_batch_exit(outcomes))


def _load_network(method: str, model: Path | None, dev):
    """(module, sha256) for network methods, (None, None) otherwise."""
    if method not in ("meta", "adapted"):
        return None, None
    from mpcli.errors import UsageError
    from mpcli.io.weights import SHIPPED_PRIOR, load_model

    if method == "adapted" and model is None:
        raise UsageError(None, "--method adapted needs --model FILE (written by mp adapt --out)")
    net, meta = load_model(model or SHIPPED_PRIOR, device=dev)
    return net, meta["sha256"]


def _report(outcomes, as_json: bool, title: str):
    if as_json:
        print(_outcomes_json(outcomes))
    else:
        console.print(_outcome_table(outcomes, title))
    for o in outcomes:
        if o.status == "failed":
            err.print(f"mp: error: {printable(o.error)}", markup=False, highlight=False, soft_wrap=True)


@app.command("eval")
def eval_cli(
    preds: list[Path] = typer.Argument(..., help="Reconstructions (our .h5 or .nii/.nii.gz)."),
    ref: Path = typer.Option(..., "--ref", help="Reference: fastMRI file with reconstruction_rss, .h5 or NIfTI."),
    figure: Path | None = typer.Option(None, help="Write a montage PNG (reference, methods, error maps)."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics as JSON on stdout."),
):
    """Score reconstructions against a reference: NMSE, PSNR, SSIM (fastMRI definitions).

    Example: mp eval recon/scan.h5 other/scan.h5 --ref sample_data/brain_fastmri.h5
    """
    with _guard():
        from mpcli.evaluate import evaluate, results_json, results_table

        results = evaluate(list(preds), ref)
        if figure is not None:
            from mpcli.evaluate import figure_from_files

            figure_from_files(list(preds), ref, figure, results)
        if as_json:
            print(results_json(results))
        else:
            console.print(results_table(results))


@app.command("info")
def info_cli(
    inputs: list[Path] = typer.Argument(..., help="k-space files (fastMRI/ISMRMRD .h5, Siemens twix .dat) or folders."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON on stdout."),
):
    """Describe k-space files: format, shape, acceleration, geometry (no patient data)."""
    with _guard():
        from rich.table import Table

        from mpcli.batch import collect_inputs
        from mpcli.io.readers import read_scans

        rows = []
        for f in collect_inputs(inputs):
            for scan in read_scans(f):
                g = scan.geometry
                rows.append({"file": str(f), "frame": scan.frame, "format": scan.format,
                             "shape": list(scan.shape), "recon_size": list(scan.recon_size),
                             "acceleration": round(scan.acceleration, 2),
                             "voxel_mm": [round(v, 3) for v in g.voxel_size],
                             "geometry": "assumed" if g.assumed else "from header"})
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        table = Table(title="mp info")
        for col in rows[0] if rows else ["file"]:
            table.add_column(col)
        for r in rows:
            table.add_row(*(_cell(v) for v in r.values()))
        console.print(table)


@app.command("adapt")
def adapt_cli(
    kspace: list[Path] = typer.Option(..., "--kspace", "-k", help="k-space file(s) (.h5, Siemens twix .dat) or folder(s) of one scanner/protocol."),
    more: list[Path] | None = typer.Argument(None, help="More k-space files (mp adapt --kspace a.h5 b.h5)."),
    prior: Path | None = typer.Option(None, help="Prior weights (default: the shipped meta-prior)."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                       help="Adapted weights (default: RECON/adapted.safetensors or ./adapted.safetensors)."),
    loss: str = typer.Option("ssdu", help="Measurement-only loss: ssdu | wssdu | ei | mc"),
    steps: int = typer.Option(40, help="Maximum adaptation steps (early stopping may end sooner)."),
    lam: float = typer.Option(1e-2, help="Proximity weight λ of λ/2‖φ − θ*‖²."),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    patience: int = typer.Option(4, help="Stop after this many steps without self-validation improvement."),
    recon: Path | None = typer.Option(None, help="Also reconstruct the inputs into this folder."),
    formats: list[str] = typer.Option(["h5", "nifti"], "--format", "-f", help="Formats for --recon (repeatable)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    seed: int = typer.Option(0, help="Seed of every random choice (splits, slices)."),
    plot: Path | None = typer.Option(None, help="Write the training/self-validation loss curve (PNG)."),
    overwrite: bool = typer.Option(False, help="Replace existing outputs."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
):
    """Adapt the meta-prior to your scans using only their measurements.

    Example: mp adapt --kspace scan.h5 --recon out/
    """
    with _guard():
        import torch

        from mpcli.batch import (
            check_output_dir,
            collect_inputs,
            output_stems,
            preflight,
            run_batch,
        )
        from mpcli.deploy import adapt_files
        from mpcli.device import resolve_device
        from mpcli.errors import InputError, UsageError
        from mpcli.meta.adapt import AdaptConfig
        from mpcli.meta.losses import LOSSES, is_measurement_only
        from mpcli.reconstruct import (
            FORMATS,
            ReconOptions,
            reconstruct_scan,
            write_outputs,
        )

        if loss not in LOSSES or not is_measurement_only(loss):
            raise UsageError(None, f"--loss must be a measurement-only loss (ssdu, wssdu, ei, mc), got {loss!r}")
        bad = [f for f in formats if f not in FORMATS]
        if bad:
            raise UsageError(None, f"--format must be among {', '.join(FORMATS)}, got {bad[0]!r}")
        inputs = list(kspace) + list(more or [])
        if recon is not None:
            check_output_dir(recon, inputs)
        files = collect_inputs(inputs)
        if not files:
            raise InputError(None, "no k-space files found in the given paths")
        if recon is not None:  # refuse output clashes now, not after minutes of adaptation
            from mpcli.io.readers import list_frames
            from mpcli.output_plan import plan_outputs

            preflight(files, recon, plan_outputs(files, output_stems(files), tuple(formats), list_frames),
                      overwrite=overwrite)
        weights = out or ((recon / "adapted.safetensors") if recon else Path("adapted.safetensors"))
        dev = resolve_device(device)
        torch.manual_seed(seed)
        config = AdaptConfig(loss=loss, steps=steps, lam=lam, lr=lr, patience=patience, seed=seed)
        with _progress() as progress:
            reading = progress.add_task("coil maps", total=len(files))
            task = progress.add_task("adapt", total=steps)

            def on_step(step, total, record):
                progress.update(task, completed=step,
                                description=f"adapt  train {record['train']:.4f}  val {record['val']:.4f}")

            adapted = adapt_files(files, weights, prior, config, dev, progress=on_step,
                                  on_file=lambda f: progress.advance(reading), overwrite=overwrite)
        res = adapted.result
        outcomes = []
        if recon is not None:
            options = ReconOptions(method="adapted", formats=tuple(dict.fromkeys(formats)))
            maps = {(s.scan.sha256, s.scan.frame): s.maps for s in adapted.site}

            def process(scan, stem):
                r = reconstruct_scan(scan, options, dev, model=adapted.model, model_sha256=adapted.sha256,
                                     maps=maps.get((scan.sha256, scan.frame)))
                return write_outputs(r, recon, stem, options)

            outcomes = run_batch(files, recon, process, model_sha256=adapted.sha256, options=options.manifest(),
                                 formats=options.formats, overwrite=overwrite, stems=output_stems(files))
        if plot is not None:
            from mpcli.report import loss_curve

            curve = res.curve
            nan = float("nan")
            loss_curve([c["step"] for c in curve], [nan if c["train"] is None else c["train"] for c in curve],
                       [c["val"] for c in curve],
                       plot, best_step=res.best_step)
        summary = {"weights": str(adapted.weights), "sha256": adapted.sha256, "parent_sha256": adapted.parent_sha256,
                   "steps": len(res.curve) - 1, "best_step": res.best_step, "stopped_early": res.stopped_early,
                   "val_loss_prior": res.curve[0]["val"], "val_loss_best": min(c["val"] for c in res.curve),
                   "distance_to_prior": res.distance, "seconds": round(res.seconds, 2),
                   "recon": json.loads(_outcomes_json(outcomes)) if outcomes else []}
        if as_json:
            print(json.dumps(summary, indent=2))
        else:
            from rich.table import Table

            table = Table(title="mp adapt", show_header=False)
            for key in ("weights", "sha256", "steps", "best_step", "stopped_early", "val_loss_prior",
                        "val_loss_best", "distance_to_prior", "seconds"):
                value = summary[key]
                table.add_row(key, f"{value:.5g}" if isinstance(value, float) else str(value))
            console.print(table)
            if outcomes:
                console.print(_outcome_table(outcomes, "reconstructions"))
        for o in outcomes:
            if o.status == "failed":
                err.print(f"mp: error: {printable(o.error)}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(_batch_exit(outcomes) if outcomes else EXIT_OK)


@app.command("meta-train")
def meta_train_cli(
    out: Path = typer.Option(..., "--out", "-o", help="Final weights (.safetensors); the checkpoint goes beside it."),
    config: Path | None = typer.Option(None, help="TOML config (see mpcli/configs/meta_prior.toml; the default "
                                       "in site mode)."),
    data: Path | None = typer.Option(None, help="Folder of fully sampled fastMRI files to add as a training source."),
    kspace: list[Path] | None = typer.Option(None, "--kspace", help="Site mode: undersampled archive (.h5 or Siemens twix .dat files, or folders), no ground truth."),
    init: str | None = typer.Option(None, help="Start from 'shipped' or a weights file (site mode default: shipped)."),
    steps: int | None = typer.Option(None, help="Outer steps (overrides the config)."),
    inner_steps: int | None = typer.Option(None, help="Inner steps per task."),
    inner_loss: str | None = typer.Option(None, help="Inner (measurement-only) loss: ssdu | wssdu | ei | mc."),
    first_order: bool = typer.Option(False, "--first-order", help="First-order hypergradient (no second derivatives)."),
    resume: bool = typer.Option(False, help="Continue from the checkpoint beside --out (bit-for-bit)."),
    seed: int | None = typer.Option(None, help="Seed (overrides the config)."),
    device: str | None = typer.Option(None, help="auto | cpu | cuda (overrides the config)."),
    log: Path | None = typer.Option(None, help="JSONL log (default: OUT with .jsonl)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
):
    """Meta-train a prior by bilevel optimisation over acquisition tasks.

    Example: mp meta-train --config mpcli/configs/meta_prior.toml --out prior.safetensors
    Multi-GPU: torchrun --nproc_per_node=4 -m mpcli meta-train --config ... --out ...
    """
    with _guard():
        import dataclasses

        from mpcli.errors import InputError
        from mpcli.io.weights import SHIPPED_CONFIG
        from mpcli.meta.train import MetaTrainConfig, meta_train, meta_train_site

        if config is None and kspace:  # site mode continues the shipped prior's inner problem
            config = SHIPPED_CONFIG
        cfg = MetaTrainConfig.from_toml(config) if config else MetaTrainConfig()
        overrides = {k: v for k, v in {"steps": steps, "inner_steps": inner_steps, "inner_loss": inner_loss,
                                       "seed": seed, "device": device}.items() if v is not None}
        if first_order:
            overrides["first_order"] = True
        if data is not None:
            if not data.is_dir():
                raise InputError(data, "--data must be a folder of fully sampled fastMRI files")
            tasks = dict(cfg.tasks)
            tasks["sources"] = [*list(tasks.get("sources", ["mni_t1"])), f"fastmri:{data}"]
            overrides["tasks"] = tasks
        try:
            cfg = dataclasses.replace(cfg, **overrides)
        except ValueError as exc:
            raise InputError(config, str(exc)) from None
        init_params = None
        if kspace and init is None:
            init = "shipped"
        if init is not None:
            from mpcli.io.weights import SHIPPED_PRIOR, load_weights

            state, meta = load_weights(SHIPPED_PRIOR if init == "shipped" else Path(init))
            init_params = state
            cfg = dataclasses.replace(cfg, network=meta["config"])
        log = log or out.with_suffix(".jsonl")
        with _progress() as progress:
            task = progress.add_task("meta-train", total=cfg.steps)

            def on_step(step, total, record):
                desc = f"meta-train  outer {record.get('outer_loss', float('nan')):.4g}"
                if "val_psnr" in record:
                    desc += f"  val PSNR {record['val_psnr']:.2f} dB"
                progress.update(task, completed=step, description=desc)

            if kspace:
                from mpcli.batch import collect_inputs
                from mpcli.deploy import load_site
                from mpcli.device import resolve_device
                from mpcli.meta.adapt import scan_batch

                dev = resolve_device(cfg.device)
                site = load_site(collect_inputs(list(kspace)), dev)
                scans = [scan_batch(s.scan, s.maps, dev) for s in site]
                result = meta_train_site(cfg, scans, init_params, out, log=log, resume=resume, progress=on_step)
            else:
                result = meta_train(cfg, out, log=log, resume=resume, progress=on_step, init_params=init_params)
        last = result.history[-1] if result.history else {}
        summary = {"weights": str(result.weights), "sha256": result.sha256, "steps": result.steps,
                   "log": str(result.log), **{k: v for k, v in last.items() if k != "step"}}
        if as_json:
            print(json.dumps(summary, indent=2))
        else:
            from rich.table import Table

            table = Table(title="mp meta-train", show_header=False)
            for key, value in summary.items():
                table.add_row(key, f"{value:.5g}" if isinstance(value, float) else str(value))
            console.print(table)


def main():
    """Console-script entry point."""
    try:
        app()
    except SystemExit as exc:  # typer/click exit codes pass through
        sys.exit(exc.code)
