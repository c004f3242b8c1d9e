"""The `edgepipe` command: parses, calls edgepipe.api, renders with rich, maps errors to exit codes.

Progress and errors go to stderr so `--json` leaves stdout holding one JSON object.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgepipe import __version__
from edgepipe.artifact import StageReport
from edgepipe.errors import BadInputError, EdgepipeError
from edgepipe.extras import require
from edgepipe.profiler.rounds import AB_LOOKS, AB_ROUNDS, DEFAULT_ROUNDS
from edgepipe.runtime import strict_json

app = typer.Typer(
    name="edgepipe",
    help="Compile neural networks for edge devices: export, optimize, lower, profile.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
RoundsOption = Annotated[int, typer.Option(
    help="Fresh processes to time in (the statistical unit of a verdict); runs are split across them.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def _stdout() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


@contextmanager
def _errors_to_exit_codes(debug: bool, as_json: bool) -> Iterator[None]:
    """One line and an exit code for every failure; a traceback only with --debug."""
    try:
        yield
    except typer.Exit:
        raise
    except EdgepipeError as exc:
        if debug:
            raise
        _fail(str(exc), exc.exit_code, as_json)
    except Terminated:
        _fail("terminated (SIGTERM); nothing was written", 143, as_json)
    except KeyboardInterrupt:
        _fail("interrupted; nothing was written", 130, as_json)
    except Exception as exc:
        if debug:
            raise
        _fail(f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
              " (rerun with --debug for the traceback)", 3, as_json)


def _fail(message: str, code: int, as_json: bool) -> None:
    if as_json:
        print(strict_json.dumps({"error": message, "exit_code": code}))
    _stderr().print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    raise typer.Exit(code)


def _print_json(data: Any) -> None:
    sys.stdout.write(strict_json.dumps(data, indent=2) + "\n")


def _version_callback(value: bool) -> None:
    if value:
        print(f"edgepipe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Compile neural networks for edge devices."""


def _stage_line(report: StageReport) -> str:
    parity = report.parity
    detail = ""
    if parity is not None:
        detail = f"max|Δ| {parity.max_abs_diff:.2e}  cos {parity.min_cosine:.6f}"
        if parity.min_top1_agreement is not None:
            detail += f"  top-1 {parity.min_top1_agreement:.3f}"
    warn = f"  [yellow]({len(report.warnings)} warning{'s' * (len(report.warnings) > 1)})[/]" \
        if report.warnings else ""
    return f"[green]✓[/] {report.stage:<8} {report.seconds:7.2f} s  {detail}{warn}"


@app.command()
def build(
    model: Annotated[str | None, typer.Argument(help="model.onnx, file.py:factory, TorchScript, .pt2, "
                                                     "or a pickled module (with --trust-pickle)")] = None,
    target: Annotated[str, typer.Option("--target", "-t", help="Target name, alias or TOML file.")]
    = "cpu",
    profile: Annotated[str | None, typer.Option("--profile", "-p",
                                                help="Profile name or TOML file "
                                                     "(default: the target's).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Bundle folder "
                                             "(default: dist/<model>-<target>).")] = None,
    inputs: Annotated[list[str] | None, typer.Option("--input", "-i",
                                                     help="NAME:1x3x224x224[:dtype]; repeatable.")]
    = None,
    calib: Annotated[str | None, typer.Option(
        help="Calibration/parity samples: .npy/.npz, a folder of them or of images, file.py:fn, "
             "or 'random' (int8 accuracy then unknown).")] = None,
    eval_data: Annotated[str | None, typer.Option(
        "--eval", help="Accuracy data for int8: an ImageFolder, an .npz with 'labels', or "
                       "file.py:fn(run) -> float.")] = None,
    train: Annotated[str | None, typer.Option(
        help="Fine-tuning data for the prune stage (same forms as --calib; labels used when "
             "present); default: the calibration data.")] = None,
    prune_ratio: Annotated[float | None, typer.Option(
        "--prune-ratio", help="Override the profile's [prune] ratio (0 <= ratio < 1).")] = None,
    min_speedup: Annotated[float | None, typer.Option(
        "--min-speedup", help="Override [quantize.budget] min_speedup: how many times faster than float "
                              "int8 must run on this host to ship (0: not checked, e.g. when the "
                              "target device is not this host).")] = None,
    device_cpu: Annotated[str | None, typer.Option(
        "--device-cpu", help="The deployment CPU: 'host' (this machine) or its ISA features, e.g. "
                             "avx2,avx512_vnni. Decides 7-bit int8 weights (x86 without VNNI/AMX) and "
                             "whether this host's timings stand for the device.")] = None,
    weights: Annotated[Path | None, typer.Option(help="State dict for a file.py:factory model.")]
    = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle.")] = False,
    sign: Annotated[Path | None, typer.Option(
        help="Sign the manifest with this Ed25519 private key (from `edgepipe keygen`).")] = None,
    portable: Annotated[bool | None, typer.Option(
        "--portable/--no-portable", help="Ship model.onnx, the portable model, in the bundle (default: "
                                         "the target's [bundle] portable; TensorRT bundles always do).")]
    = None,
    encrypt: Annotated[bool, typer.Option(
        "--encrypt", help="Encrypt the model files (AES-256-GCM); key from --encrypt-key or "
                          "$EDGEPIPE_MODEL_KEY, never stored in the bundle.")] = False,
    encrypt_key: Annotated[Path | None, typer.Option(
        "--encrypt-key", help="File holding the AES-256 key (64 hex digits); implies --encrypt.")] = None,
    trust_pickle: Annotated[bool, typer.Option(
        "--trust-pickle", help="Allow loading pickled modules (runs code from the file).")] = False,
    skip_pass: Annotated[list[str] | None, typer.Option(
        "--skip-pass", help="A fuse pass not to run (repeatable); see report.md for names.")]
    = None,
    from_bundle: Annotated[Path | None, typer.Option(
        "--from-bundle", help="Build a TensorRT bundle's engine here (needs TensorRT and the "
                              "target's GPU), as its `run.py --build-engine` does on the device.")]
    = None,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Build a deployable bundle of MODEL for a target (or, with --from-bundle, a TensorRT engine)."""
    from edgepipe import api

    err = _stderr()
    with _errors_to_exit_codes(debug, as_json):
        if from_bundle is not None:
            if model is not None:
                raise BadInputError("give a MODEL or --from-bundle, not both")
            record = api.build_engine(from_bundle)
            if as_json:
                _print_json(record)
            else:
                _stdout().print(f"built {from_bundle / record['engine']} with TensorRT {record['tensorrt']} "
                                f"for compute capability {record['compute_capability']}", markup=False)
            return
        if model is None:
            raise BadInputError("missing MODEL (or --from-bundle BUNDLE)")
        def on_stage(report: StageReport) -> None:
            err.print(_stage_line(report))
            for warning in report.warnings:
                err.print(f"  [yellow]warning:[/] {escape(warning)}", markup=True, highlight=False)

        # A transient status line on a terminal only: pipes, CI logs and --json get the stage
        # lines (or the one JSON object) and nothing else.
        live = err.is_terminal and not as_json
        with err.status("building", spinner="dots") if live else contextlib.nullcontext() as status:
            def on_progress(message: str) -> None:
                if status is not None:
                    status.update(escape(message))

            result = api.build(model, target=target, profile=profile, out=out, inputs=inputs or [],
                               calib=calib, eval_data=eval_data, train=train, prune_ratio=prune_ratio,
                               min_speedup=min_speedup, device_cpu=device_cpu, weights=weights, force=force,
                               sign=sign, portable=portable, encrypt=encrypt, encrypt_key=encrypt_key,
                               trust_pickle=trust_pickle, skip_passes=skip_pass or [], on_stage=on_stage,
                               on_progress=on_progress)
        if as_json:
            _print_json(result.summary)
            return
        summary = result.summary
        parity = summary["parity"]
        console = _stdout()
        console.print(f"[bold]bundle[/] {escape(str(result.bundle))}  ({summary['backend']}, "
                      f"{summary['size_bytes'] / 2**20:.1f} MiB)")
        console.print(f"parity vs source: max|Δ| {parity['max_abs_diff']:.2e}, "
                      f"cosine {parity['min_cosine']:.6f} on {parity['reference_inputs']}")


@app.command()
def keygen(
    path: Annotated[Path, typer.Argument(help="Key file to write (ed25519: the public key goes to "
                                              "PATH.pub).")],
    kind: Annotated[str, typer.Option(help="ed25519 (signing) or aes256 (model encryption).")] = "ed25519",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key.")] = False,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Make a key: an Ed25519 pair for `build --sign` / `verify --pubkey`, or an AES-256 key (`--encrypt`)."""
    from edgepipe import api

    with _errors_to_exit_codes(debug, as_json):
        if kind not in ("ed25519", "aes256"):
            raise BadInputError(f"--kind: '{kind}' is not ed25519 or aes256")
        paths = api.keygen(path, kind, force)
        if as_json:
            _print_json({"kind": kind, "files": [str(p) for p in paths]})
            return
        if kind == "aes256":
            _stdout().print(f"AES-256 key {paths[0]} (mode 600): give it to the build (--encrypt-key) and to "
                            "the device (run.py --key-file or $EDGEPIPE_MODEL_KEY)", markup=False)
        else:
            _stdout().print(f"private key {paths[0]} (keep it secret, mode 600); public key {paths[1]} "
                            "(ship it to devices)", markup=False)


@app.command("prune-scan")
def prune_scan(
    model: Annotated[str, typer.Argument(help="file.py:factory or a pickled module (with --trust-pickle)")],
    eval_data: Annotated[str, typer.Option("--eval", help="Scoring data: an ImageFolder, an .npz with "
                                                          "'labels', or file.py:fn(run) -> float.")],
    ratios: Annotated[str | None, typer.Option(help="Comma-separated ratios (default: the profile's "
                                                    "scan_ratios).")] = None,
    profile: Annotated[str, typer.Option("--profile", "-p", help="Profile with a [prune] table.")]
    = "pruned",
    inputs: Annotated[list[str] | None, typer.Option("--input", "-i", help="NAME:1x3x224x224[:dtype].")]
    = None,
    weights: Annotated[Path | None, typer.Option(help="State dict for a file.py:factory model.")] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow pickled modules.")] = False,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Accuracy vs pruning ratio per layer group (each pruned alone): where channels are cheap."""
    from edgepipe import api

    with _errors_to_exit_codes(debug, as_json):
        try:
            parsed = [float(r) for r in ratios.split(",")] if ratios else []
        except ValueError:
            raise BadInputError(f"--ratios: not a comma-separated list of numbers: {ratios}") from None
        err = _stderr()
        result = api.prune_scan(model, eval_data=eval_data, profile=profile, ratios=parsed,
                                inputs=inputs or [], weights=weights, trust_pickle=trust_pickle,
                                on_row=lambda row: err.print(f"  {row.layer:<32} {row.ratio:>5.2f}  "
                                                             f"drop {row.drop:+.4g}"))
        if as_json:
            _print_json(result)
            return
        table = Table(title=f"{result['primary']} drop vs unpruned ({result['float']:.4g}), "
                            f"each group pruned alone, no fine-tuning")
        table.add_column("layer group")
        for ratio in result["ratios"]:
            table.add_column(f"{ratio:g}", justify="right")
        table.add_column("suggested", justify="right")
        drops: dict[str, dict[float, float]] = {}
        for row in result["rows"]:
            drops.setdefault(row["layer"], {})[row["ratio"]] = row["drop"]
        for layer, by_ratio in drops.items():
            table.add_row(layer, *(f"{by_ratio[r]:.3g}" for r in result["ratios"]),
                          f"{result['suggested'][layer]:g}")
        _stdout().print(table)
        _stdout().print(f"suggested: largest ratio costing ≤ {result['tolerance']:g} alone; put them in "
                        "[prune] layer_ratios, or set [prune] scan = true", markup=False)


@app.command()
def inspect(
    path: Annotated[str, typer.Argument(help="A bundle folder, or any model `build` accepts.")],
    trust_pickle: Annotated[bool, typer.Option(
        "--trust-pickle", help="Allow loading pickled modules (runs code from the file).")] = False,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Show a model's inputs, outputs, opsets, ops, parameters and size, or a bundle's summary."""
    from edgepipe import api

    with _errors_to_exit_codes(debug, as_json):
        info = api.inspect(path, trust_pickle=trust_pickle)
        if as_json:
            _print_json(info)
            return
        console = _stdout()
        table = Table(title=str(path), show_header=False)
        for key, value in info.items():
            if isinstance(value, list | dict):
                value = json.dumps(value) if len(json.dumps(value)) < 200 else \
                    json.dumps(value)[:197] + "..."
            table.add_row(key, str(value))
        console.print(table)


@app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder.")],
    pubkey: Annotated[Path | None, typer.Option(
        help="Ed25519 public key: also check the manifest's signature.")] = None,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Re-check every file of a bundle against its manifest (exit 1 on any difference)."""
    from edgepipe import api

    with _errors_to_exit_codes(debug, as_json):
        problems = api.verify(bundle, pubkey)
        if as_json:
            _print_json({"bundle": str(bundle), "ok": not problems, "problems": problems})
        elif problems:
            for problem in problems:
                _stderr().print(f"[bold red]mismatch:[/] {escape(problem)}", markup=True, highlight=False)
        else:
            signed = " and the manifest's signature is valid" if pubkey else ""
            _stdout().print(f"{bundle}: every file matches the manifest{signed}")
        if problems:
            raise typer.Exit(1)


@app.command("diff")
def diff_command(
    source: Annotated[Path, typer.Argument(help="The float ONNX model the bundle was built from.")],
    bundle: Annotated[Path, typer.Argument(help="A bundle folder (ONNX Runtime or OpenVINO).")],
    data: Annotated[str | None, typer.Option(
        help="Inputs to compare on: .npy/.npz, an image folder, file.py:fn (default: seeded random "
             "inputs; int8 errors show best on real data).")] = None,
    samples: Annotated[int, typer.Option(help="How many inputs.")] = 8,
    html: Annotated[Path | None, typer.Option(
        help="Also write an HTML page with the error along the depth of the network.")] = None,
    top: Annotated[int, typer.Option(help="Rows of the worst tensors to print.")] = 10,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Which layer loses the accuracy: each tensor of the bundle's model against the float source."""
    from edgepipe import api

    with _errors_to_exit_codes(debug, as_json):
        if html is not None:
            require("matplotlib", "edgepipe diff --html")
        result = api.layer_diff(source, bundle, data=data, samples=samples, html=html)
        if as_json:
            _print_json(result)
            return
        console = _stdout()
        console.print(f"{result['compared']} of {result['of']} tensors of {source.name} found in the "
                      f"{result['backend']} model, compared on {result['data']}", markup=False)
        first = result["first_jump"]
        if first:
            console.print(f"first layer where the error jumps: {first['tensor']} ({first['op_type']}, "
                          f"{first['jump_db']} dB lost, SQNR {first['sqnr_db']} dB)", markup=False)
        else:
            console.print("no layer loses 6 dB or more of SQNR", markup=False)
        table = Table("depth", "tensor", "op", "SQNR dB", "cosine", "jump dB", title="largest jumps")
        for row in result["largest_jumps"][:top]:
            table.add_row(str(row["depth"]), escape(row["tensor"]), row["op_type"], str(row["sqnr_db"]),
                          str(row["cosine"]), str(row["jump_db"]))
        console.print(table)
        if html is not None:
            console.print(f"written to {html}", markup=False)


@app.command()
def profile(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder.")],
    runs: Annotated[int, typer.Option(help="Timed runs (at least).")] = 100,
    min_duration: Annotated[float, typer.Option(help="...and at least this many seconds of them.")] = 0.0,
    warmup: Annotated[int, typer.Option(help="Untimed runs first.")] = 10,
    threads: Annotated[int | None, typer.Option(help="Runtime threads (default: the target's).")]
    = None,
    out: Annotated[Path | None, typer.Option("--out", "-o",
                                             help="Where to write profile.json "
                                                  "(default: beside the bundle).")] = None,
    layers: Annotated[bool, typer.Option("--layers", help="Also time each layer (a separate "
                                                          "profiled pass).")] = False,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Also write an HTML report with plots to this file.")] = None,
    host: Annotated[str | None, typer.Option(help="Profile on user@device over SSH instead.")] = None,
    port: Annotated[int | None, typer.Option(help="SSH port.")] = None,
    identity: Annotated[Path | None, typer.Option(help="SSH private key.")] = None,
    remote_python: Annotated[str, typer.Option(help="Python on the device (with numpy and the "
                                                    "runtime).")] = "python3",
    ssh_option: Annotated[list[str] | None, typer.Option(help="Extra ssh -o Key=Value (repeatable).")]
    = None,
    pubkey: Annotated[Path | None, typer.Option(
        help="Ed25519 public key: profile only a bundle signed by it (checked before anything else).")]
    = None,
    rounds: RoundsOption = DEFAULT_ROUNDS,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Time a bundle in several fresh processes (rounds; the runs are split across them), here with
    the installed runtime or on a device over SSH with the bundle's run.py."""
    from edgepipe import api

    with _errors_to_exit_codes(debug, as_json):
        remote = _remote(host, port, identity, remote_python, ssh_option)
        if report is not None:
            require("matplotlib", "edgepipe profile --report")  # fail before minutes of timing
        path, data = api.profile(bundle, runs=runs, warmup=warmup, threads=threads, out=out,
                                 layers=layers, remote=remote, min_duration=min_duration, pubkey=pubkey,
                                 rounds=rounds)
        if report is not None:
            from edgepipe.profiler.html_report import write_html_report

            write_html_report(data, report)
            _stderr().print(f"report written to {escape(str(report))}")
        if as_json:
            _print_json(data)
            return
        _render_profile(path, data)


def _remote(host: str | None, port: int | None, identity: Path | None, python: str,
            ssh_option: list[str] | None):
    from edgepipe.profiler.remote import RemoteHost

    return None if host is None else RemoteHost(host, port, identity, python, tuple(ssh_option or ()))


@app.command()
def compare(
    baseline: Annotated[Path, typer.Argument(help="The baseline profile.json (with --run: bundle).")],
    new: Annotated[Path, typer.Argument(help="The new profile.json (with --run: bundle).")],
    run: Annotated[bool, typer.Option(
        "--run", help="A/B: time the two bundles here (or on --host) in interleaved rounds, each a "
                      "fresh process, then decide: the robust gate on a noisy device.")] = False,
    max_slowdown: Annotated[str, typer.Option(help="Allowed slowdown, e.g. 5% or 0.05.")] = "5%",
    alpha: Annotated[float, typer.Option(help="Significance level of the test.")] = 0.01,
    metric: Annotated[str, typer.Option(help="p50, p90, or energy.")] = "p50",
    rounds: Annotated[int | None, typer.Option(
        help=f"--run: round pairs per look, each bundle a fresh process (default {AB_ROUNDS}).")] = None,
    looks: Annotated[int | None, typer.Option(
        help=f"--run: while inconclusive, time --rounds more pairs, up to this many looks, each at "
             f"alpha/looks (default {AB_LOOKS}).")] = None,
    runs: Annotated[int | None, typer.Option(
        help="--run: timed runs per bundle, split across rounds (default 120).")] = None,
    warmup: Annotated[int | None, typer.Option(help="--run: untimed runs per round (default 10).")] = None,
    threads: Annotated[int | None, typer.Option(help="--run: runtime threads (default: the target's).")]
    = None,
    host: Annotated[str | None, typer.Option(help="--run on user@device over SSH.")] = None,
    port: Annotated[int | None, typer.Option(help="SSH port.")] = None,
    identity: Annotated[Path | None, typer.Option(help="SSH private key.")] = None,
    remote_python: Annotated[str, typer.Option(help="Python on the device.")] = "python3",
    ssh_option: Annotated[list[str] | None, typer.Option(help="Extra ssh -o Key=Value (repeatable).")]
    = None,
    pubkey: Annotated[Path | None, typer.Option(
        help="--run: time only bundles signed by this Ed25519 key (checked first).")] = None,
    save: Annotated[Path | None, typer.Option(
        help="--run: also write the two profiles (baseline/new.profile.json) into this folder.")] = None,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Decide whether NEW regressed against BASELINE: two profile.json (rounds compared, the
    process as the unit), two matrix.json (cell by cell, board by board), or with --run two bundles
    timed A/B on one device; exit 1 on a significant regression."""
    from edgepipe import api
    from edgepipe.compare import compare_files, parse_threshold
    from edgepipe.matrix import report as matrix_report

    with _errors_to_exit_codes(debug, as_json):
        timing = {"rounds": rounds or AB_ROUNDS, "runs": runs or 120, "threads": threads, "pubkey": pubkey,
                  "warmup": 10 if warmup is None else warmup}
        if looks is not None:
            timing["looks"] = looks
        given = [flag for flag, value in (("--rounds", rounds), ("--looks", looks), ("--runs", runs),
                                          ("--warmup", warmup),
                                          ("--threads", threads), ("--host", host), ("--pubkey", pubkey),
                                          ("--save", save)) if value is not None]
        if given and not run:
            raise BadInputError(f"{given[0]} applies to `compare --run` only (two profiles are compared "
                                "as they were measured)")
        if run and matrix_report.is_matrix_json(baseline):
            from edgepipe.matrix.rerun import rerun

            if host is not None or save is not None:
                raise BadInputError("compare --run on two matrices times on the boards the matrix names; "
                                    "--host and --save do not apply")
            result = rerun(baseline, new, metric=metric, max_slowdown=parse_threshold(max_slowdown),
                           alpha=alpha, **timing)
        elif run:
            remote = _remote(host, port, identity, remote_python, ssh_option)
            result = api.compare_run(baseline, new, remote=remote, metric=metric, alpha=alpha,
                                     max_slowdown=parse_threshold(max_slowdown), save=save, **timing)
        elif matrix_report.is_matrix_json(baseline):
            if metric not in ("p50", "p90"):
                raise BadInputError(f"--metric {metric!r}: matrices compare p50 or p90 latency")
            result = matrix_report.compare(matrix_report.load_matrix_json(baseline),
                                           matrix_report.load_matrix_json(new), metric=metric,
                                           max_slowdown=parse_threshold(max_slowdown), alpha=alpha)
        else:
            result = compare_files(baseline, new, metric=metric, max_slowdown=parse_threshold(max_slowdown),
                                   alpha=alpha)
        if as_json:
            _print_json(result)
        elif result.get("kind") == "matrix":
            _render_matrix_compare(result)
        else:
            _render_compare(result)
    if result["exit_code"]:
        raise typer.Exit(result["exit_code"])


def _render_matrix_compare(result: dict[str, Any]) -> None:
    table = Table(title=f"matrix comparison: {result['regressions']} regression(s)")
    for column in ("model", "target", "profile", "check", "baseline", "new", "verdict"):
        table.add_column(column)
    for row in result["rows"]:
        model, target, profile_name = row["cell"]
        values = [_number(row.get("baseline")), _number(row.get("new"))]
        color = {"regression": "red", "pass": "green"}.get(row["verdict"], "yellow")
        table.add_row(model, target, profile_name, row["check"], *values, f"[{color}]{row['verdict']}[/]")
    _stdout().print(table)


def _number(value: Any) -> str:
    return "—" if value is None else f"{value:.4g}"


@app.command()
def matrix(
    matrix_file: Annotated[Path, typer.Argument(help="MATRIX.toml: models, targets, profiles, exclusions.")],
    address: Annotated[str | None, typer.Option(
        help="Join this Ray cluster (ray://host:10001, host:6379 or auto); default: a local instance.")]
    = None,
    jobs: Annotated[int | None, typer.Option(help="Builds in flight (default: this machine's CPUs).")] = None,
    devices: Annotated[Path | None, typer.Option(help="devices.toml (default: the matrix file's `devices`).")]
    = None,
    out: Annotated[Path, typer.Option(help="Where matrix.json, matrix.md and profiles go.")]
    = Path("matrix-results"),
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Build every model x target x profile on Ray (content-addressed cache), profile each on the
    boards of its target, and exit with the worst cell's code."""
    from edgepipe.matrix.orchestrate import run_matrix
    from edgepipe.matrix.spec import load_matrix

    err = _stderr()
    with _errors_to_exit_codes(debug, as_json):
        loaded = load_matrix(matrix_file, devices)

        def on_cell(cell: dict[str, Any]) -> None:
            mark = {"built": "[green]✓ built [/]", "cached": "[cyan]✓ cached[/]"}.get(
                cell["status"], "[red]✗ failed[/]")
            detail = (f"  {escape(cell['error'])}" if cell["status"] == "failed"
                      else f"  {cell['seconds']:.1f} s")
            err.print(f"{mark} {cell['model']} / {cell['target']} / {cell['profile']}{detail}",
                      markup=True, highlight=False)

        result = run_matrix(loaded, out=out, address=address, jobs=jobs, on_cell=on_cell)
        if as_json:
            _print_json(result)
        else:
            _render_matrix(result, out)
    if result["summary"]["exit_code"]:
        raise typer.Exit(result["summary"]["exit_code"])


def _render_matrix(result: dict[str, Any], out: Path) -> None:
    devices = sorted({name for c in result["cells"] for name in c["devices"]})
    table = Table(title=f"matrix: {result['summary']['cells']} cells in {result['seconds']:.1f} s")
    columns = ("model", "target", "profile", "status", "MiB", "top-1 int8", *(f"{d} p50 ms" for d in devices))
    for column in columns:
        table.add_column(column)
    for cell in result["cells"]:
        size = cell.get("size_bytes")
        row = [cell["model"], cell["target"], cell["profile"], cell["status"],
               "—" if size is None else f"{size / 2**20:.2f}",
               _number(cell.get("accuracy", {}).get("top1_int8"))]
        for name in devices:
            entry = cell["devices"].get(name)
            row.append("" if entry is None else
                       f"{entry['p50_ms']:.3f}" if entry["status"] == "profiled" else entry["status"])
        table.add_row(*row)
    _stdout().print(table)
    unreachable = result["summary"]["unreachable_devices"]
    if unreachable:
        _stderr().print(f"[yellow]warning:[/] unreachable devices: {', '.join(unreachable)}", markup=True)
    _stdout().print(f"written: {out / 'matrix.json'}, {out / 'matrix.md'}", markup=False)


def _render_compare(result: dict[str, Any]) -> None:
    d = result["decision"]
    console = _stdout()
    rounds = result.get("rounds", {"baseline": 1, "new": 1})
    table = Table(title=f"{d['metric']}, {rounds['baseline']} vs {rounds['new']} rounds "
                        f"({result['samples']['baseline']} vs {result['samples']['new']} runs; unit: "
                        f"{d.get('unit', 'run')})" + (f", {result['mode']}" if result.get("mode") else ""))
    for column in ("baseline ms", "new ms", "ratio", f"{100 * d['confidence']:.0f} % interval", "p-value",
                   "allowed", "verdict"):
        table.add_column(column, justify="right")
    colour = {"regression": "red", "pass": "green", "inconclusive": "yellow"}[d["verdict"]]
    table.add_row(f"{d['baseline']:.3f}", f"{d['new']:.3f}", f"{d['ratio']:.3f}",
                  f"{d['ci_low']:.3f} – {d['ci_high']:.3f}", f"{d['p_value']:.2g}",
                  f"≤ {1 + d['threshold']:.3f}", f"[{colour}]{d['verdict']}[/]")
    console.print(table)
    context = Table(title="context (not gated)")
    for column in ("", "baseline", "new"):
        context.add_column(column, justify="right" if column else "left")
    for row in result["context"]:
        values = (row["baseline"], row["new"])
        context.add_row(row["what"], *("—" if v is None else f"{v:.6g}" for v in values))
    console.print(context)
    for warning in result["warnings"]:
        _stderr().print(f"[yellow]warning:[/] {escape(warning)}", markup=True, highlight=False)
    if d["verdict"] == "inconclusive":
        console.print("inconclusive: the noise is larger than the allowed slowdown; use more rounds, "
                      "`compare --run` (A/B on one device), or a quieter machine")


def _render_profile(path: Path, data: dict[str, Any]) -> None:
    summary = data["latency_ms"]["summary"]
    runtime = data["runtime"]
    table = Table(title=f"{data['bundle']['model']} on {data['bundle']['target']} "
                        f"({runtime['name']} {runtime['version']}, threads "
                        f"{data['settings']['threads']})")
    for column in ("p50", "p90", "p99", "mean", "std", "min", "max"):
        table.add_column(f"{column} ms", justify="right")
    table.add_column("inf/s", justify="right")
    table.add_row(*(f"{summary[c]:.3f}" for c in ("p50", "p90", "p99", "mean", "std", "min", "max")),
                  f"{summary['throughput_per_s']:.1f}")
    console = _stdout()
    console.print(table)
    cold = data["cold_start_ms"]
    console.print(f"cold start {cold['total']:.1f} ms (load {cold['load']:.1f} + first inference "
                  f"{cold['first_inference']:.1f}); peak RSS {data['memory']['peak_rss_mb']:.0f} MiB; "
                  f"{data['settings']['runs']} runs on {data['device']['cpu']}")
    energy = data["energy"]
    if energy.get("available"):
        console.print(f"energy {1000 * energy['joules_per_inference']:.3f} mJ/inference "
                      f"({energy['meter']}, {energy['mean_active_power_w']:.2f} W active, "
                      f"{energy['idle_power_w']:.2f} W idle subtracted)")
    else:
        console.print(f"energy unavailable: {escape(energy.get('reason', 'no meter'))}")
    per_layer = data["per_layer"]
    if per_layer.get("layers"):
        layer_table = Table(title=f"slowest layers ({per_layer['source']}, {per_layer['runs']} runs, "
                                  f"{per_layer['total_ms']:.3f} ms in {per_layer['layers_total']} layers)")
        for column in ("layer", "type", "kernel", "mean ms", "share"):
            layer_table.add_column(column, justify="right" if column in ("mean ms", "share") else "left")
        for row in per_layer["layers"][:10]:
            layer_table.add_row(escape(row["name"]), row["type"], row["exec_type"], f"{row['mean_ms']:.4f}",
                                f"{100 * row['share']:.1f} %")
        console.print(layer_table)
    console.print(f"written to {path}")


def _listing(rows: list[dict[str, Any]], columns: list[str], title: str, as_json: bool) -> None:
    if as_json:
        _print_json(rows)
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(", ".join(v) if isinstance(v, list) else str(v)
                        for v in (row[c] for c in columns)))
    _stdout().print(table)


@app.command()
def targets(as_json: JsonOption = False, debug: DebugOption = False) -> None:
    """List the built-in targets and their aliases."""
    from edgepipe.config import list_targets

    with _errors_to_exit_codes(debug, as_json):
        rows = [{"name": t.name,
                 "aliases": [*t.aliases, *(f"{alias} (on {'/'.join(hosts)})"
                                           for alias, hosts in t.host_aliases.items())],
                 "backend": t.backend, "description": t.description} for t in list_targets()]
        _listing(rows, ["name", "aliases", "backend", "description"], "targets", as_json)


@app.command()
def profiles(as_json: JsonOption = False, debug: DebugOption = False) -> None:
    """List the built-in optimization profiles."""
    from edgepipe.profiles import list_profiles

    with _errors_to_exit_codes(debug, as_json):
        rows = [{"name": p.name, "stages": list(p.stages), "description": p.description}
                for p in list_profiles()]
        _listing(rows, ["name", "stages", "description"], "profiles", as_json)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, raised by our own SIGINT handler.

    A subclass on purpose: when a plain KeyboardInterrupt passes through a nested
    PyRun_* call (pybind11 runs some during `import torch`), CPython remembers it
    and kills the process with SIGINT at exit even after we handled it, losing
    exit code 130. CPython checks for the exact type, so a subclass avoids that.
    """


class Terminated(Interrupted):
    """SIGTERM (a CI job cancelled, `kill`): handled like Ctrl-C, the staging folder removed by the
    same `finally` blocks, exit 143 (128 + 15) as a shell reports a process ended by SIGTERM."""


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Terminated() if signum == signal.SIGTERM else Interrupted()


def main() -> None:
    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    app()


