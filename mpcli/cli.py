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
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    MpError,
    printable,
)
from mpcli.helptext import Group, Typer, verbatim

app = Typer(
    name="mp",
    cls=Group,
    help="Meta-prior MRI reconstruction: adapt a meta-learned network to your scanner's "
    "undersampled k-space without ground truth, reconstruct, write NIfTI/DICOM/HDF5.\n\n"
    + verbatim("""
First time? From the source folder, try the sample scan:
  mp info sample_data/
  mp adapt --kspace sample_data/brain_fastmri.h5 --recon out/
  mp eval out/brain_fastmri.h5 --ref sample_data/brain_fastmri.h5
"""),
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


def _outcome_table(outcomes, title: str, out_dir: Path | None = None):
    """One row per input: its outputs by name (folders end in /) relative to ``out_dir``."""
    from rich.table import Table
    from rich.text import Text

    def shown(p: Path) -> str:
        name = p.relative_to(out_dir).as_posix() if out_dir is not None and p.is_relative_to(out_dir) else str(p)
        return name + ("/" if p.is_dir() else "")

    table = Table(title=title)
    table.add_column("input", overflow="fold")
    table.add_column("status")
    table.add_column("outputs", overflow="fold")
    table.add_column("seconds", justify="right")
    if any(o.error for o in outcomes):
        table.add_column("error", overflow="fold")
    for o in outcomes:
        outputs = "\n".join(printable(shown(p)) for p in o.outputs) or "-"  # one name per line
        row = [_cell(o.input.name), o.status, Text(outputs), f"{o.seconds:.1f}"]
        if any(x.error for x in outcomes):
            row.append(_cell(o.error))
        table.add_row(*row)
    return table


def _print_outcomes(outcomes, title: str, out_dir: Path | None) -> None:
    """The outcome table, then where the outputs are (one line, never wrapped, to copy)."""
    console.print(_outcome_table(outcomes, title, out_dir))
    if out_dir is not None and any(o.outputs for o in outcomes):
        console.print(f"written to {printable(out_dir)}/", soft_wrap=True, markup=False, highlight=False)


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


_SEND_HELP = ("Also store each DICOM series (needs --format dicom) in this PACS by C-STORE, e.g. "
              "ORTHANC@pacs.example.org:4242. A PACS that refuses or cannot be reached keeps the local "
              "outputs and fails that input (exit 4, or 7 in a batch); --resume sends only what it did "
              "not acknowledge (recorded in each manifest).")


# Options that mp reconstruct and mp watch share (one definition, one help text).
_METHOD = typer.Option("cs", metavar="METHOD",
                       help="zero-filled, sense (CG-SENSE), cs (L1-wavelet), meta (the shipped "
                       "prior, not adapted) or adapted (the network from mp adapt; needs --model).")
_FORMATS = typer.Option(["h5", "nifti"], "--format", "-f", metavar="FORMAT",
                        help="h5, nifti or dicom; repeat for several (-f nifti -f dicom) "
                        "or give a comma list (-f nifti,dicom).")
_MODEL = typer.Option(None, metavar="WEIGHTS.safetensors",
                      help="Network weights for --method adapted (or meta): the file mp adapt wrote.")
_DEVICE = typer.Option("auto", metavar="DEVICE", help="auto, cpu, cuda or cuda:N.")
_CS_LAM = typer.Option(1e-3, metavar="NUMBER",
                       help="L1-wavelet weight for --method cs (on scale-normalised data).")
_BATCH = typer.Option(4, min=1, metavar="SLICES", help="Slices per network batch (halved on GPU out-of-memory).")
_VIRTUAL_COILS_HELP = ("Compress each slice's coils to N virtual coils first (SVD of the acquired k-space; "
                       "faster with many coils); 0: off.")
_VIRTUAL_COILS = typer.Option(None, "--virtual-coils", min=0, metavar="N",
                              help=_VIRTUAL_COILS_HELP + " Default: what mp adapt used for --model, else 0.")
_ANONYMIZE = typer.Option(False, "--anonymize", help="Blank patient and study identifiers in DICOM.")
_CALLING_AET = typer.Option("MP", "--calling-aet", metavar="AET", help="Our AE title when sending (--send).")


@app.command("reconstruct", short_help="Reconstruct k-space files or folders into images: HDF5, NIfTI, DICOM.")
def reconstruct_cli(
    inputs: list[Path] = typer.Argument(..., metavar="SCAN|DIR...",
                                        help="k-space files (fastMRI or ISMRMRD .h5, Siemens twix .dat) or folders of them."),
    out_dir: Path = typer.Option(..., "--out", "-o", metavar="DIR", help="Output folder (created if needed)."),
    method: str = _METHOD,
    formats: list[str] = _FORMATS,
    model: Path | None = _MODEL,
    device: str = _DEVICE,
    cs_lam: float = _CS_LAM,
    batch: int = _BATCH,
    virtual_coils: int | None = _VIRTUAL_COILS,
    resume: bool = typer.Option(False, "--resume", help="Skip inputs whose outputs and manifest already match."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo inputs whose outputs exist."),
    shard: str | None = typer.Option(None, metavar="I/N",
                                     help="Only the I-th of N deterministic shards of the inputs (job arrays)."),
    anonymize: bool = _ANONYMIZE,
    send: str | None = typer.Option(None, "--send", metavar="AET@HOST:PORT", help=_SEND_HELP),
    calling_aet: str = _CALLING_AET,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
):
    """Reconstruct k-space files or folders into images: HDF5, NIfTI, DICOM.

    A bad file is reported and skipped; the others finish (exit code 7).
    With --send each DICOM series is also stored in a PACS.

    Examples:

    \b
      mp reconstruct scans/ --out recon/
      mp reconstruct scans/ --out recon/ --method cs --format nifti --format dicom
      mp reconstruct scan.h5 --out recon/ --method adapted \\
                     --model out/adapted.safetensors --format dicom
      mp reconstruct scans/ --out recon/ -f nifti,dicom --send PACS@pacs:104
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
        from mpcli.errors import InputError

        fmts, sender = _outputs(method, formats, send, calling_aet, out_dir)
        parse_shard(shard)
        check_output_dir(out_dir, inputs)
        files = collect_inputs(inputs)
        if not files:
            raise InputError(None, "no k-space files (.h5, .hdf5, .mrd) found in the given folders")
        stems = output_stems(files)
        files = select_shard(files, parse_shard(shard))
        process, options, model_sha = _recon_job(method, model, device, fmts, cs_lam, batch, anonymize, out_dir,
                                                     virtual_coils)

        with _progress() as progress:
            task = progress.add_task(f"reconstruct ({method})", total=len(files))
            outcomes = run_batch(files, out_dir, process, model_sha256=model_sha,
                                 options=options.manifest(), formats=options.formats, resume=resume,
                                 overwrite=overwrite, stems=stems, on_file=lambda o: progress.advance(task),
                                 after=sender)
        _report(outcomes, as_json, "mp reconstruct", out_dir)
        raise typer.Exit(_batch_exit(outcomes))


def _outputs(method: str, formats: list[str], send: str | None, calling_aet: str, out_dir: Path):
    """``(formats, sender)`` of ``mp reconstruct`` and ``mp watch`` after checking ``--method``,
    ``--format`` and ``--send`` (usage errors before any input is read)."""
    from mpcli.errors import UsageError
    from mpcli.reconstruct import METHODS, parse_formats

    if method not in METHODS:
        raise UsageError(None, f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    fmts = parse_formats(formats)
    return fmts, _pacs_sender(send, calling_aet, fmts, out_dir)


def _pacs_sender(send: str | None, calling_aet: str, formats: tuple[str, ...], out_dir: Path):
    """The ``run_batch`` step that sends to ``--send`` (None without it); bad values are usage errors."""
    if send is None:
        return None
    from mpcli.delivery import PacsSender
    from mpcli.errors import UsageError
    from mpcli.io.pacs import check_aet, parse_destination

    dest = parse_destination(send)
    check_aet(calling_aet, "--calling-aet")
    if "dicom" not in formats:
        raise UsageError(None, "--send stores DICOM series: add dicom to --format (e.g. --format nifti,dicom)")
    return PacsSender(out_dir, dest, calling_aet)


def _recon_job(method: str, model: Path | None, device: str, formats: tuple[str, ...], cs_lam: float,
               batch: int, anonymize: bool, out_dir: Path, virtual_coils: int | None = None):
    """``(process, options, model_sha256)`` for :func:`mpcli.batch.run_batch`: reconstruct
    one scan with ``method`` and write it into ``out_dir``; ``virtual_coils`` None: the model's."""
    from mpcli.device import resolve_device
    from mpcli.reconstruct import ReconOptions, reconstruct_scan, write_outputs

    dev = resolve_device(device)
    net, model_sha, refine, model_coils = _load_network(method, model, dev)
    options = ReconOptions(method=method, formats=formats, cs_lam=cs_lam, batch=batch, anonymize=anonymize,
                           refine=refine, virtual_coils=model_coils if virtual_coils is None else virtual_coils)

    def process(scan, stem):
        recon = reconstruct_scan(scan, options, dev, model=net, model_sha256=model_sha)
        return write_outputs(recon, out_dir, stem, options)

    return process, options, model_sha


def _load_network(method: str, model: Path | None, dev):
    """(module, sha256, refinement dict or None, virtual coils) for network methods, (None, None, None, 0)
    otherwise.

    The refinement and the coil compression are what ``mp adapt`` chose and used and stored in the file
    (``--method adapted`` only; 0: none)."""
    if method not in ("meta", "adapted"):
        return None, None, None, 0
    from mpcli.errors import ModelError, UsageError
    from mpcli.io.weights import SHIPPED_PRIOR, load_model
    from mpcli.recon.refine import Refinement

    if method == "adapted" and model is None:
        raise UsageError(None, "--method adapted needs --model FILE (written by mp adapt --out)")
    path = model or SHIPPED_PRIOR
    net, meta = load_model(path, device=dev)
    refine = meta.get("refine") if method == "adapted" else None
    if refine is not None:
        try:
            refine = Refinement.from_dict(refine).as_dict()
        except ValueError as exc:
            raise ModelError(path, f"bad refinement in the metadata: {exc}") from None
    coils = meta.get("virtual_coils", 0) if method == "adapted" else 0
    if not (isinstance(coils, int) and not isinstance(coils, bool) and coils >= 0):
        raise ModelError(path, f"bad virtual_coils in the metadata: {coils!r}")
    return net, meta["sha256"], refine, coils


def _report(outcomes, as_json: bool, title: str, out_dir: Path | None = None):
    if as_json:
        print(_outcomes_json(outcomes))
    else:
        _print_outcomes(outcomes, title, out_dir)
    for o in outcomes:
        if o.status == "failed":
            err.print(f"mp: error: {printable(o.error)}", markup=False, highlight=False, soft_wrap=True)


@app.command("eval", short_help="Score reconstructions against a reference: NMSE, PSNR, SSIM (fastMRI definitions).")
def eval_cli(
    preds: list[Path] = typer.Argument(..., metavar="RECON.h5|RECON.nii.gz...",
                                       help="Reconstructions: files written by mp (.h5) or NIfTI."),
    ref: Path = typer.Option(..., "--ref", metavar="REF.h5|REF.nii.gz",
                             help="Reference image: a fastMRI file with reconstruction_rss, an mp .h5 or NIfTI."),
    figure: Path | None = typer.Option(None, metavar="REPORT.png",
                                       help="Also write a montage: reference, each method, error maps."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON on stdout."),
):
    """Score reconstructions against a reference: NMSE, PSNR, SSIM (fastMRI definitions).

    Example:

    \b
      mp eval recon/scan.h5 cs/scan.h5 --ref scan.h5 --figure report.png
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


@app.command("info", short_help="Describe k-space files: format, size, acceleration, geometry (no patient data).")
def info_cli(
    inputs: list[Path] = typer.Argument(..., metavar="SCAN|DIR...",
                                        help="k-space files (fastMRI or ISMRMRD .h5, Siemens twix .dat) or folders of them."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON on stdout."),
):
    """Describe k-space files: format, size, acceleration, geometry (no patient data).

    R is the measured acceleration: phase-encode lines (or k-space samples,
    for 2-D masks) over the acquired ones, calibration (centre) lines
    included; fastMRI and ISMRMRD files do not record the nominal R of the
    protocol (the sample's mask, drawn for R = 4, acquired 39 of 128 lines:
    R 3.28). A file that cannot be read is reported and the others are still
    listed (exit code 7).

    Example:

    \b
      mp info sample_data/
    """
    with _guard():
        from mpcli.batch import collect_inputs
        from mpcli.errors import InputError
        from mpcli.info import describe_files, info_json, info_table

        files = collect_inputs(inputs)
        if not files:
            raise InputError(None, "no k-space files (.h5, .hdf5, .mrd) found in the given folders")
        infos = describe_files(files)
        if as_json:
            print(json.dumps(info_json(infos), indent=2))
        else:
            console.print(info_table(infos, console.width))
        for i in infos:
            if not i.ok:
                err.print(f"mp: error: {printable(i.error)}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(_batch_exit([_InfoOutcome(i) for i in infos]))


class _InfoOutcome:
    """An ``mp info`` file seen as a batch outcome, for the shared exit-code rule."""

    def __init__(self, info):
        self.status = "done" if info.ok else "failed"
        self.exit_code = info.exit_code


@app.command("adapt", short_help="Adapt the shipped meta-prior to your scans from their measurements alone.")
def adapt_cli(
    kspace: list[Path] = typer.Option(..., "--kspace", "-k", metavar="SCAN|DIR",
                                      help="k-space file (.h5, Siemens twix .dat) or folder of one scanner and "
                                      "protocol; more files may follow it."),
    more: list[Path] | None = typer.Argument(None, metavar="MORE_SCANS...",
                                             help="More k-space files of the same protocol."),
    prior: Path | None = typer.Option(None, metavar="WEIGHTS.safetensors",
                                      help="Prior to start from (default: the shipped meta-prior)."),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="WEIGHTS.safetensors",
                                    help="Where to write the adapted network (default: "
                                    "DIR/adapted.safetensors with --recon DIR, else ./adapted.safetensors)."),
    loss: str = typer.Option("ssdu", metavar="LOSS", help="Measurement-only loss: ssdu, wssdu, ei or mc."),
    steps: int = typer.Option(40, metavar="N", help="Most adaptation steps (early stopping may end sooner)."),
    lam: float = typer.Option(1e-2, metavar="NUMBER", help="Proximity weight λ of λ/2‖φ − θ*‖²."),
    lr: float = typer.Option(1e-3, metavar="NUMBER", help="Adam learning rate."),
    patience: int = typer.Option(4, metavar="N", help="Stop after N steps without self-validation improvement."),
    params: str = typer.Option("all", "--params", metavar="SET",
                               help="What adapts: all, head (the denoiser's output side and μ), biases, mu, or "
                               "lowrank (rank-R deltas of every weight)."),
    rank: int = typer.Option(4, metavar="R", help="Rank of the deltas with --params lowrank."),
    no_mu_search: bool = typer.Option(False, "--no-mu-search",
                                      help="Keep the prior's data-consistency weight μ (by default it is first "
                                      "chosen from 1/8× to 8× by the held-out k-space)."),
    no_refine: bool = typer.Option(False, "--no-refine",
                                   help="Reconstruct with the network alone (by default CS around the network's "
                                   "image, its L1 term weighted by the image's own wavelets, is tried last, "
                                   "λ and μ chosen by the held-out k-space, and kept when it predicts that "
                                   "k-space better)."),
    keep_prior_above: float = typer.Option(1.0, "--keep-prior-above", metavar="ERROR",
                                           help="Keep the prior unadapted when its relative error predicting the "
                                           "held-out k-space is at least ERROR (1: no better than predicting "
                                           "zeros, seen at R = 8 with 5 calibration lines); inf: never."),
    min_calibration: int = typer.Option(7, "--min-calibration", metavar="LINES",
                                        help="Keep the prior unadapted when a scan's coil maps come from fewer "
                                        "than LINES fully sampled centre lines (the held-out k-space cannot "
                                        "judge images made through such maps); 0: never."),
    virtual_coils: int = typer.Option(0, "--virtual-coils", min=0, metavar="N",
                                      help=_VIRTUAL_COILS_HELP + " Recorded in the weights file."),
    recon: Path | None = typer.Option(None, metavar="DIR", help="Also reconstruct the scans into this folder."),
    formats: list[str] = typer.Option(["h5", "nifti"], "--format", "-f", metavar="FORMAT",
                                      help="Formats for --recon: h5, nifti or dicom; repeat for several "
                                      "or give a comma list."),
    send: str | None = typer.Option(None, "--send", metavar="AET@HOST:PORT",
                                    help="Also store the --recon DICOM series in this PACS (C-STORE). If it fails, "
                                    "`mp reconstruct SCANS --out DIR --method adapted --model WEIGHTS --format "
                                    "… --resume --send …` sends only what was not acknowledged."),
    calling_aet: str = typer.Option("MP", "--calling-aet", metavar="AET",
                                    help="Our AE title when sending (--send)."),
    device: str = typer.Option("auto", metavar="DEVICE", help="auto, cpu, cuda or cuda:N."),
    seed: int = typer.Option(0, metavar="N", help="Seed of every random choice (splits, slices)."),
    plot: Path | None = typer.Option(None, metavar="CURVE.png",
                                     help="Also plot the training and self-validation losses."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
):
    """Adapt the shipped meta-prior to your scans from their measurements alone.

    Chooses the network's data-consistency weight by how well it predicts
    held-out k-space, fine-tunes the network on the acquired k-space (no ground
    truth), stops when held-out k-space stops improving, tries CS around the
    network's image (kept when it predicts held-out k-space better), and writes
    the adapted weights with that choice. Where held-out k-space cannot judge
    (coil maps from fewer than 7 calibration lines, or a prior that predicts
    it no better than zeros) the prior is kept, and the summary says why.

    Examples:

    \b
      mp adapt --kspace scan.h5 --recon out/
      mp adapt --kspace scans/ --recon out/ --format dicom --plot out/curve.png
      mp adapt --kspace a.h5 b.h5 --out site.safetensors
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
        from mpcli.errors import InputError, OutputError, UsageError
        from mpcli.io.paths import expect_file_to_write
        from mpcli.meta.adapt import PARAM_SETS, AdaptConfig
        from mpcli.meta.losses import LOSSES, is_measurement_only
        from mpcli.reconstruct import (
            ReconOptions,
            parse_formats,
            reconstruct_scan,
            write_outputs,
        )

        if loss not in LOSSES or not is_measurement_only(loss):
            raise UsageError(None, f"--loss must be a measurement-only loss (ssdu, wssdu, ei, mc), got {loss!r}")
        if params not in PARAM_SETS or rank < 1:
            raise UsageError(None, f"--params must be one of {', '.join(PARAM_SETS)} and --rank >= 1, "
                                   f"got {params!r}, {rank}")
        if not keep_prior_above > 0:
            raise UsageError(None, f"--keep-prior-above must be positive (inf: never), got {keep_prior_above:g}")
        if min_calibration < 0:
            raise UsageError(None, f"--min-calibration must be >= 0 (0: never), got {min_calibration}")
        fmts = parse_formats(formats)
        if send is not None and recon is None:
            raise UsageError(None, "--send sends the reconstructions: add --recon DIR")
        sender = _pacs_sender(send, calling_aet, fmts, recon) if recon is not None else None
        inputs = list(kspace) + list(more or [])
        if recon is not None:
            check_output_dir(recon, inputs)
        files = collect_inputs(inputs)
        if not files:
            raise InputError(None, "no k-space files found in the given paths")
        if recon is not None:  # refuse output clashes now, not after minutes of adaptation
            from mpcli.io.readers import list_frames
            from mpcli.output_plan import plan_outputs

            preflight(files, recon, plan_outputs(files, output_stems(files), fmts, list_frames),
                      overwrite=overwrite)
        weights = out or ((recon / "adapted.safetensors") if recon else Path("adapted.safetensors"))
        expect_file_to_write(weights, "the adapted weights file (--out)", "adapted.safetensors", error=OutputError)
        dev = resolve_device(device)
        torch.manual_seed(seed)
        config = AdaptConfig(loss=loss, steps=steps, lam=lam, lr=lr, patience=patience, seed=seed, params=params,
                             rank=rank, refine=not no_refine, max_prior_error=keep_prior_above,
                             min_calibration=min_calibration,
                             **({"mu_factors": ()} if no_mu_search else {}))
        with _progress() as progress:
            reading = progress.add_task("coil maps", total=len(files))
            task = progress.add_task("adapt", total=steps)

            def on_step(step, total, record):
                progress.update(task, completed=step,
                                description=f"adapt  train {record['train']:.4f}  val {record['val']:.4f}")

            adapted = adapt_files(files, weights, prior, config, dev, progress=on_step,
                                  on_file=lambda f: progress.advance(reading), overwrite=overwrite,
                                  virtual_coils=virtual_coils)
        res = adapted.result
        outcomes = []
        if recon is not None:
            options = ReconOptions(method="adapted", formats=fmts, refine=res.refine, virtual_coils=virtual_coils)
            maps = {(s.scan.sha256, s.scan.frame): s.maps for s in adapted.site}

            def process(scan, stem):
                r = reconstruct_scan(scan, options, dev, model=adapted.model, model_sha256=adapted.sha256,
                                     maps=maps.get((scan.sha256, scan.frame)))
                return write_outputs(r, recon, stem, options)

            outcomes = run_batch(files, recon, process, model_sha256=adapted.sha256, options=options.manifest(),
                                 formats=options.formats, overwrite=overwrite, stems=output_stems(files),
                                 after=sender)
        if plot is not None:
            from mpcli.report import loss_curve

            curve = res.curve
            nan = float("nan")
            loss_curve([c["step"] for c in curve], [nan if c["train"] is None else c["train"] for c in curve],
                       [c["val"] for c in curve],
                       plot, best_step=res.best_step,
                       stop_note=(f"stopped: no improvement for {patience} steps" if res.stopped_early
                                  else f"ran all {len(curve) - 1} steps"))
        summary = {"weights": str(adapted.weights), "sha256": adapted.sha256, "parent_sha256": adapted.parent_sha256,
                   "steps": len(res.curve) - 1, "best_step": res.best_step, "stopped_early": res.stopped_early,
                   "mu_scale": res.mu_scale,
                   "val_loss_prior": res.val_prior,
                   "val_loss_best": min(c["val"] for c in res.curve),
                   "distance_to_prior": res.distance,
                   "refine": res.refine,  # CS around the network's image, or None
                   "kept_prior": res.kept_prior,  # why the prior was kept unchanged, or None
                   "val_loss_refined": _refined_error(res),
                   "seconds": round(res.seconds, 2),
                   "plot": str(plot) if plot is not None else None,
                   "recon": json.loads(_outcomes_json(outcomes)) if outcomes else []}
        if as_json:
            print(json.dumps(summary, indent=2))
        else:
            from rich.table import Table

            table = Table(title="mp adapt", show_header=False)
            table.add_column(no_wrap=True)
            table.add_column(overflow="fold")  # paths and hashes wrap whole, never cut with "…"
            shown = {**summary, "refine": _refine_cell(res.refine, no_refine, res.kept_prior is not None)}
            for key in ("weights", "plot", "sha256", "kept_prior", "steps", "best_step", "mu_scale", "stopped_early",
                        "val_loss_prior", "val_loss_best", "distance_to_prior", "refine", "val_loss_refined",
                        "seconds"):
                value = shown[key]
                if value is not None:
                    table.add_row(key, _cell(f"{value:.5g}" if isinstance(value, float) else str(value)))
            console.print(table)
            if outcomes:
                _print_outcomes(outcomes, "reconstructions", recon)
        for o in outcomes:
            if o.status == "failed":
                err.print(f"mp: error: {printable(o.error)}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(_batch_exit(outcomes) if outcomes else EXIT_OK)


def _refined_error(res) -> float | None:
    """The unweighted held-out error of what ``mp adapt`` chose at its last step: the refinement, or the
    network alone when none was kept (comparable with ``val_loss_best``); None when nothing was tried."""
    def key(d: dict) -> tuple:
        return d["lam"], d["mu"], list(d.get("reweighted", []))

    chosen = (None, None, []) if res.refine is None else key(res.refine)
    return next((t["val_unweighted"] for t in res.refine_search if key(t) == chosen), None)


def _refine_cell(refine: dict | None, off: bool, kept_prior: bool = False) -> str:
    """How ``mp adapt``'s summary table shows the refinement it chose."""
    if off:
        return "off (--no-refine)"
    if kept_prior:
        return "none: the prior is kept (kept_prior)"
    if refine is None:
        return "none: the network alone predicts the held-out k-space best"
    l1 = "plain L1" if refine.get("eps") is None else f"L1 weighted by the network's wavelets, ε {refine['eps']:g}"
    again = "".join(f", then again around that image with λ {lam:g}" for lam in refine.get("reweighted", []))
    return (f"CS around the network: λ {refine['lam']:g}, μ {refine['mu']:g}, {refine['iters']} iterations, "
            f"{l1}{again}")


@app.command("watch", short_help="Reconstruct each k-space file that lands in a folder, until stopped.")
def watch_cli(
    inbox: Path = typer.Argument(..., metavar="INBOX",
                                 help="Folder to watch (subfolders too), e.g. where the scanner exports."),
    out_dir: Path = typer.Option(..., "--out", "-o", metavar="DIR",
                                 help="Output folder (created if needed); not inside INBOX."),
    method: str = _METHOD,
    formats: list[str] = _FORMATS,
    model: Path | None = _MODEL,
    device: str = _DEVICE,
    cs_lam: float = _CS_LAM,
    batch: int = _BATCH,
    virtual_coils: int | None = _VIRTUAL_COILS,
    anonymize: bool = _ANONYMIZE,
    send: str | None = typer.Option(None, "--send", metavar="AET@HOST:PORT",
                                    help="Also store each DICOM series in this PACS (C-STORE); what it does not "
                                    "acknowledge is sent again later and after a restart."),
    calling_aet: str = _CALLING_AET,
    settle: float = typer.Option(5.0, min=0.0, metavar="SECONDS",
                                 help="How long a file's size and mtime must stay unchanged before it counts "
                                 "as complete (files renamed in from a temporary name wait this long too)."),
    poll: float = typer.Option(1.0, min=0.01, metavar="SECONDS", help="Time between looks at INBOX."),
    retry: float = typer.Option(300.0, min=0.0, metavar="SECONDS",
                                help="With --send: wait before sending again what the PACS did not "
                                "acknowledge (outputs are kept meanwhile)."),
    once: bool = typer.Option(False, "--once", help="Handle what is in INBOX (waiting for files still being "
                              "written), then exit with the batch exit code (for cron and tests)."),
    log: Path | None = typer.Option(None, metavar="LOG.jsonl",
                                    help="JSON-lines event log (default: DIR/watch.jsonl; appended)."),
):
    """Reconstruct each k-space file that lands in a folder, until stopped.

    A file in INBOX is handled once it is complete (size and mtime unchanged
    for --settle seconds). Temporary names (dotfiles, *.tmp, *.part, *.partial, *.crdownload, *~) are
    ignored. Each file gets the outputs, manifest and errors of mp reconstruct;
    a bad file is logged and skipped. Files already done (a matching manifest in
    DIR) are skipped, so a restart picks up only what it missed. SIGTERM
    finishes the current file and exits 0; Ctrl-C (SIGINT) or a second SIGTERM
    abandons it (nothing half-written is left) and exits 130.

    Examples:

    \b
      mp watch /srv/export --out /srv/recon -f nifti,dicom --send PACS@pacs:104
      mp watch inbox/ --out recon/ --once
    """
    with _guard():
        from mpcli.batch import check_output_dir
        from mpcli.errors import InputError
        from mpcli.watch import JsonlLog, StopFlag, stop_signals, watch

        fmts, sender = _outputs(method, formats, send, calling_aet, out_dir)
        if not inbox.is_dir():
            raise InputError(inbox, "is not a folder; mp watch needs the folder files land in")
        check_output_dir(out_dir, [inbox])
        process, options, model_sha = _recon_job(method, model, device, fmts, cs_lam, batch, anonymize, out_dir,
                                                     virtual_coils)
        if sender is not None:
            sender.pause = min(sender.pause, retry)  # a retry must really try
        journal = JsonlLog(log or out_dir / "watch.jsonl")

        def show(record):
            event = record["event"]
            if event == "failed":
                err.print(f"mp: error: {printable(record['error'])}", markup=False, highlight=False, soft_wrap=True)
            elif event in ("done", "skipped"):
                err.print(f"mp watch: {event} {printable(record['input'])}", markup=False, highlight=False,
                          soft_wrap=True)
            elif event == "error":
                err.print(f"mp watch: {printable(record['error'])} (still watching)", markup=False,
                          highlight=False, soft_wrap=True)

        def reports(stem):
            report = sender.reports.pop(stem, None) if sender is not None else None
            return report.as_dict() if report is not None else None

        try:
            with stop_signals(StopFlag()) as stop:
                result = watch(inbox, out_dir, process, model_sha256=model_sha, options=options.manifest(),
                               formats=options.formats, log=journal, settle=settle, poll=poll, once=once,
                               stop=stop, after=sender, reports=reports, on_event=show, retry=retry,
                               start_fields={"method": method, "formats": list(fmts),
                                             "send": str(sender.dest) if sender else None})
        finally:
            journal.close()
        raise typer.Exit(_batch_exit(result.outcomes) if once else EXIT_OK)


@app.command("meta-train", short_help="Meta-train a prior by bilevel optimisation over acquisition tasks (advanced).")
def meta_train_cli(
    out: Path = typer.Option(..., "--out", "-o", metavar="PRIOR.safetensors",
                             help="Final weights; the checkpoint and the log go beside it."),
    config: Path | None = typer.Option(None, metavar="CONFIG.toml",
                                       help="Training config (see mpcli/configs/meta_prior.toml, the default "
                                       "in site mode)."),
    data: Path | None = typer.Option(None, metavar="DIR",
                                     help="Folder to add as a training source: fully sampled fastMRI files, "
                                     "or NIfTI/DICOM images (k-space simulated)."),
    kspace: list[Path] | None = typer.Option(None, "--kspace", metavar="SCAN|DIR",
                                             help="Site mode: an undersampled archive (.h5 or twix .dat files, or "
                                             "folders; no ground truth); repeat for several."),
    init: str | None = typer.Option(None, metavar="shipped|FILE",
                                    help="Start from the shipped prior or a weights file (site mode: shipped)."),
    steps: int | None = typer.Option(None, metavar="N", help="Outer steps (overrides the config)."),
    inner_steps: int | None = typer.Option(None, metavar="N", help="Inner steps per task."),
    inner_loss: str | None = typer.Option(None, metavar="LOSS",
                                          help="Inner (measurement-only) loss: ssdu, wssdu, ei or mc."),
    first_order: bool = typer.Option(False, "--first-order", help="First-order hypergradient (no second derivatives)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint beside --out (bit-for-bit)."),
    seed: int | None = typer.Option(None, metavar="N", help="Seed (overrides the config)."),
    device: str | None = typer.Option(None, metavar="DEVICE", help="auto, cpu or cuda (overrides the config)."),
    log: Path | None = typer.Option(None, metavar="LOG.jsonl", help="Training log (default: --out with .jsonl)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
):
    """Meta-train a prior by bilevel optimisation over acquisition tasks (advanced).

    Examples:

    \b
      mp meta-train --config mpcli/configs/meta_prior.toml \\
                    --out prior.safetensors
      mp meta-train --init shipped --kspace archive/ --out site.safetensors

    Several GPUs (PyTorch's torchrun):

    \b
      torchrun --nproc_per_node=4 -m mpcli meta-train \\
               --config CONFIG.toml --out prior.safetensors
    """
    with _guard():
        import dataclasses

        from mpcli.errors import InputError, OutputError
        from mpcli.io.paths import expect_file, expect_file_to_write
        from mpcli.io.weights import SHIPPED_CONFIG
        from mpcli.meta.train import MetaTrainConfig, meta_train, meta_train_site

        expect_file_to_write(out, "the prior's weights file (--out)", "prior.safetensors", error=OutputError)
        if config is not None:
            expect_file(config, "a .toml config file like mpcli/configs/meta_prior.toml", suffixes=(".toml",))
        if config is None and kspace:  # site mode continues the shipped prior's inner problem
            config = SHIPPED_CONFIG
        cfg = MetaTrainConfig.from_toml(config) if config else MetaTrainConfig()
        overrides = {k: v for k, v in {"steps": steps, "inner_steps": inner_steps, "inner_loss": inner_loss,
                                       "seed": seed, "device": device}.items() if v is not None}
        if first_order:
            overrides["first_order"] = True
        if data is not None:
            if not data.is_dir():
                raise InputError(data, "--data must be a folder of fully sampled fastMRI files "
                                       "or of NIfTI/DICOM images")
            from mpcli.data.sources import get_source

            kind = "fastmri" if any(data.glob("*.h5")) else "images"
            get_source(f"{kind}:{data}")  # index it now: a folder with nothing usable fails before training
            tasks = dict(cfg.tasks)
            tasks["sources"] = [*list(tasks.get("sources", ["mni_t1"])), f"{kind}:{data}"]
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
            table.add_column(no_wrap=True)
            table.add_column(overflow="fold")  # paths and hashes wrap whole, never cut with "…"
            for key, value in summary.items():
                table.add_row(key, _cell(f"{value:.5g}" if isinstance(value, float) else str(value)))
            console.print(table)


def main():
    """Console-script entry point."""
    try:
        app()
    except SystemExit as exc:  # typer/click exit codes pass through
        sys.exit(exc.code)
