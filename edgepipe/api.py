"""The Python API: build, inspect, verify, profile. The CLI is a thin layer over it."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

from pydantic import ValidationError

from edgepipe import manifest as manifest_io
from edgepipe.artifact import StageReport
from edgepipe.backends import get_backend
from edgepipe.bundle import write_bundle
from edgepipe.config import Profile, Target, load_target, with_device_cpu
from edgepipe.data.samples import RANDOM, open_samples
from edgepipe.errors import BadInputError, GateFailedError, MissingExtraError
from edgepipe.extras import require
from edgepipe.pipeline import run_stages
from edgepipe.profiler.remote import RemoteHost
from edgepipe.profiler.report import default_profile_path, make_profile
from edgepipe.profiler.rounds import (
    AB_LOOKS,
    AB_ROUNDS,
    DEFAULT_ROUNDS,
    MIN_AB_ROUNDS,
    LocalPlace,
    RemotePlace,
    TimingOptions,
    time_rounds,
)
from edgepipe.profiles import load_profile
from edgepipe.reference import make_reference
from edgepipe.runtime import strict_json
from edgepipe.settings import describe_validation_error
from edgepipe.shapes import parse_input_specs, resolve_inputs
from edgepipe.sources import load_source
from edgepipe.stages import BuildContext
from edgepipe.stages.quantize import CALIBRATION_NEEDED
from edgepipe.staging import publish, staging_area


@dataclass(frozen=True)
class BuildResult:
    bundle: Path
    manifest: dict[str, Any]

    @property
    def summary(self) -> dict[str, Any]:
        return manifest_io.summary(self.manifest, self.bundle)


def model_name(spec: str) -> str:
    """The name a model's bundle is given, known before the model is loaded."""
    file_part, _, function = spec.rpartition(":")
    if file_part.endswith(".py") and function:
        return function
    return Path(spec).stem or "model"


def build(
    model: str,
    *,
    target: str = "cpu",
    profile: str | None = None,
    out: Path | None = None,
    inputs: Sequence[str] = (),
    calib: str | Path | None = None,
    eval_data: str | Path | None = None,
    train: str | Path | None = None,
    prune_ratio: float | None = None,
    min_speedup: float | None = None,
    device_cpu: str | None = None,
    weights: Path | None = None,
    force: bool = False,
    trust_pickle: bool = False,
    skip_passes: Sequence[str] = (),
    sign: Path | None = None,
    portable: bool | None = None,
    encrypt: bool = False,
    encrypt_key: Path | None = None,
    on_stage: Callable[[StageReport], None] = lambda report: None,
    on_progress: Callable[[str], None] = lambda message: None,
) -> BuildResult:
    """Compile `model` for `target` into a bundle folder; nothing is left behind on failure."""
    started = perf_counter()
    signing_key = None
    if sign is not None:
        from edgepipe import signing

        signing_key = signing.load_private_key(sign)
    model_key = None
    if encrypt or encrypt_key is not None:
        from edgepipe import encryption

        model_key = encryption.load_key(encrypt_key)
    resolved_target = with_device_cpu(load_target(target), device_cpu)
    resolved_profile = with_skipped_passes(load_profile(profile or resolved_target.default_profile),
                                           skip_passes)
    resolved_profile = with_prune_ratio(resolved_profile, prune_ratio)
    if not resolved_profile.candidates:
        resolved_profile = with_min_speedup(resolved_profile, min_speedup)
    overrides = parse_input_specs(inputs)
    target_label = resolved_target.name if target.endswith(".toml") else target
    out = out or Path("dist") / f"{model_name(model)}-{target_label}"
    if resolved_profile.candidates:
        return _build_auto(model, target, resolved_target, resolved_profile, out, force=force,
                           calib=None if calib is None else str(calib), signing_key=signing_key,
                           common={"inputs": inputs, "eval_data": eval_data, "train": train,
                                   "prune_ratio": prune_ratio, "min_speedup": min_speedup,
                                   "device_cpu": device_cpu,
                                   "weights": weights,
                                   "trust_pickle": trust_pickle, "skip_passes": skip_passes,
                                   "on_stage": on_stage, "on_progress": on_progress, "portable": portable,
                                   "encrypt": encrypt,
                                   "encrypt_key": encrypt_key})
    backend = get_backend(resolved_target.backend)
    try:
        require(backend.runtime_module, f"target '{resolved_target.name}' (backend {backend.name})")
    except MissingExtraError as exc:
        if resolved_target.name != target:  # reached through an alias such as `cpu`
            raise MissingExtraError(exc.module, exc.extra,
                                    f"target '{target}' (= {resolved_target.name} on this host; "
                                    f"--target onnxruntime-cpu needs no extra)") from None
        raise
    ranged = next((o.name for o in overrides.values()
                   if o.shape_range and o.shape_range[0] != o.shape_range[2]), None)
    if ranged is not None and not backend.shape_ranges:
        raise BadInputError(f"--input {ranged}: a MIN/OPT/MAX range, but target '{resolved_target.name}' "
                            f"(backend {backend.name}) builds for one static shape; give one shape")
    inputs = _input_paths(model, weights, calib, eval_data, train)
    try:
        with staging_area(out, force, inputs) as staging:
            source = load_source(model, trust_pickle=trust_pickle, weights=weights)
            specs = resolve_inputs(source.declared_inputs(overrides), overrides)
            if "prune" in resolved_profile.stages:
                from edgepipe.stages.prune import check_source

                check_source(resolved_profile.stage_settings["prune"], source.kind)
            budget = resolved_profile.accuracy
            calib_spec = str(calib) if calib is not None else _profile_calib(resolved_profile)
            if calib_spec is None and "quantize" in resolved_profile.stages:
                raise BadInputError(CALIBRATION_NEEDED)
            samples, origin = reference_samples(calib_spec, specs, resolved_profile)
            reference = make_reference(source, specs, budget.samples, budget.seed, samples, origin)
            context = BuildContext(source=source, target=resolved_target, profile=resolved_profile,
                                   inputs=specs, reference=reference, work_dir=staging / "build",
                                   bundle_dir=staging / "bundle", calib=calib_spec,
                                   eval=str(eval_data) if eval_data is not None else None,
                                   train=str(train) if train is not None else None,
                                   shape_ranges={name: o.shape_range for name, o in overrides.items()
                                                 if o.shape_range is not None},
                                   notices=_unused_data(resolved_profile, eval_data, train),
                                   progress=on_progress)
            result = run_stages(context, on_stage)
            manifest = write_bundle(
                staging / "bundle", staging / "build", source=source, target=resolved_target,
                target_spec=target, profile=resolved_profile, result=result, reference=reference,
                backend_versions=backend.runtime_versions(), seconds=perf_counter() - started,
                portable=resolved_target.bundle.portable if portable is None else portable,
                encrypt_key=model_key)
            _sign(staging / "bundle", signing_key)
            publish(staging, out, force)
    except OSError as exc:  # nothing was published
        raise _os_error(exc, out, inputs) from None
    return BuildResult(out, manifest)


def _unused_data(profile: Profile, eval_data: object, train: object) -> tuple[str, ...]:
    """Data the user gave that this profile never reads: say so instead of ignoring it."""
    notices = []
    if eval_data is not None and not {"quantize", "prune"} & set(profile.stages):
        notices.append(f"--eval is not used: profile '{profile.name}' has no quantize or prune stage "
                       "(its stages are held to parity with the source model)")
    if train is not None and "prune" not in profile.stages:
        notices.append(f"--train is not used: profile '{profile.name}' has no prune stage")
    return tuple(notices)


def _sign(bundle: Path, key: Any) -> None:
    """Sign the finished manifest (the last write to a bundle before it is published)."""
    if key is not None:
        from edgepipe import signing

        signing.sign_bundle(bundle, key)


def _input_paths(*specs: str | Path | None) -> tuple[Path, ...]:
    """The files and folders a build reads, which its output must never replace."""
    from edgepipe.python_callable import split_spec

    paths = []
    for spec in specs:
        if spec is None or str(spec) == RANDOM:
            continue
        parts = split_spec(str(spec))
        paths.append(parts[0] if parts else Path(spec))
    return tuple(p for p in paths if p.exists())


def _os_error(exc: OSError, out: Path, inputs: tuple[Path, ...]) -> BadInputError:
    """An input that could not be read says so, naming it; anything else is the output failing (a
    full disk, a folder removed mid-build)."""
    if exc.filename:
        path = Path(exc.filename).absolute()
        if any(path == held.absolute() or held.absolute() in path.parents for held in inputs):
            return BadInputError(f"cannot read {exc.filename}: {exc.strerror or exc}")
    return BadInputError(f"cannot write the bundle ({exc.filename or out}): {exc.strerror or exc}")


def _build_auto(model: str, target_spec: str, target: Target, profile: Profile, out: Path, *, force: bool,
                calib: str | None, signing_key: Any, common: dict[str, Any]) -> BuildResult:
    """`--profile auto`: the output is checked before any candidate is built, the candidates are
    built and timed in a staging folder, and the very bundle that won is shipped (its manifest
    and report gain the selection, then it is signed), never a rebuild of it."""
    from edgepipe import auto_select
    from edgepipe.bundle import record_selection
    from edgepipe.staging import build_dir_for

    inputs = _input_paths(model, common["weights"], calib, common["eval_data"], common["train"])
    try:
        with staging_area(out, force, inputs) as staging:
            selection, chosen = auto_select.select(build, model, target=target, target_spec=target_spec,
                                                   profile=profile, calib=calib, work=staging / "candidates",
                                                   **common)
            manifest = record_selection(chosen, build_dir_for(chosen), {"profile": profile.name, **selection})
            _sign(chosen, signing_key)
            for source, slot in ((chosen, staging / "bundle"), (build_dir_for(chosen), staging / "build")):
                shutil.rmtree(slot)
                os.rename(source, slot)
            publish(staging, out, force)
    except OSError as exc:  # nothing was published
        raise _os_error(exc, out, inputs) from None
    return BuildResult(out, manifest)


def _profile_calib(profile: Profile) -> str | None:
    quantize = profile.stage_settings.get("quantize")
    return getattr(quantize, "calib", None) if "quantize" in profile.stages else None


def reference_samples(calib: str | None, specs, profile: Profile) -> tuple[list | None, str]:
    """The first samples of the calibration set, so parity is judged on real data where given."""
    if calib is None or calib == RANDOM:
        return None, ""
    quantize = profile.stage_settings.get("quantize")
    source = open_samples(calib, specs, preprocess=getattr(quantize, "preprocess", None))
    samples = list(source.samples(profile.accuracy.samples))
    return samples, source.describe(len(samples))


def with_skipped_passes(profile: Profile, skip_passes: Sequence[str]) -> Profile:
    """The profile with `--skip-pass` names added to its fuse stage's own skip list."""
    if not skip_passes:
        return profile
    if "fuse" not in profile.stages:
        raise BadInputError(f"--skip-pass: profile '{profile.name}' has no fuse stage")
    fuse = profile.stage_settings["fuse"]
    try:
        merged = type(fuse).model_validate({**fuse.model_dump(),
                                            "skip": [*fuse.skip, *skip_passes]})
    except ValidationError as exc:
        raise BadInputError(describe_validation_error(exc, "--skip-pass")) from None
    return dataclasses.replace(profile, stage_settings={**profile.stage_settings, "fuse": merged})


def with_min_speedup(profile: Profile, min_speedup: float | None) -> Profile:
    """The profile with `--min-speedup` written into its quantize stage's budget."""
    if min_speedup is None:
        return profile
    if "quantize" not in profile.stages:
        raise BadInputError(f"--min-speedup: profile '{profile.name}' has no quantize stage")
    quantize = profile.stage_settings["quantize"]
    try:
        budget = type(quantize.budget).model_validate({**quantize.budget.model_dump(),
                                                       "min_speedup": min_speedup})
    except ValidationError as exc:
        raise BadInputError(describe_validation_error(exc, "--min-speedup")) from None
    merged = quantize.model_copy(update={"budget": budget})
    return dataclasses.replace(profile, stage_settings={**profile.stage_settings, "quantize": merged})


def with_prune_ratio(profile: Profile, ratio: float | None) -> Profile:
    """The profile with `--prune-ratio` written into its prune stage's settings."""
    if ratio is None:
        return profile
    if "prune" not in profile.stages:
        raise BadInputError(f"--prune-ratio: profile '{profile.name}' has no prune stage "
                            "(try --profile pruned or int8-pruned)")
    prune = profile.stage_settings["prune"]
    try:
        merged = type(prune).model_validate({**prune.model_dump(), "ratio": ratio})
    except ValidationError as exc:
        raise BadInputError(describe_validation_error(exc, "--prune-ratio")) from None
    return dataclasses.replace(profile, stage_settings={**profile.stage_settings, "prune": merged})


def verify(bundle: Path, pubkey: Path | None = None) -> list[str]:
    """Differences between a bundle and its manifest (and its signature, given a key); empty when intact."""
    if pubkey is None:
        return manifest_io.verify_bundle(bundle)
    from edgepipe.runtime.signature import check_signature, read_public_key

    if not (bundle / manifest_io.MANIFEST_NAME).is_file():
        manifest_io.load_manifest(bundle)  # raises the usual one-line error
    pem = read_public_key(pubkey)
    require("cryptography", "checking bundle signatures")
    problems = check_signature(bundle, pem, str(pubkey))
    if problems:  # a failed signature stops everything: nothing else of the bundle is read
        return problems
    return manifest_io.verify_bundle(bundle)


def build_engine(bundle: Path) -> dict[str, Any]:
    """`build --from-bundle`: build a TensorRT bundle's engine here, from the plan in its manifest,
    with the same code as the bundle's `run.py --build-engine` (the runtime it ships)."""
    from edgepipe.runtime.keys import model_bytes
    from edgepipe.runtime.runners import tensorrt as engine

    manifest = manifest_io.load_manifest(bundle)
    problems = manifest_io.verify(bundle, manifest)
    if problems:
        raise BadInputError(f"{bundle}: does not match its manifest: {problems[0]}")
    plan = manifest["backend"].get("engine")
    if not plan:
        raise BadInputError(f"{bundle}: a {manifest['backend']['name']} bundle has no engine to build "
                            "(--from-bundle is for TensorRT targets)")
    key = None
    if manifest.get("encryption"):
        from edgepipe import encryption

        key = encryption.load_key(None)
    onnx_bytes = model_bytes(bundle, manifest, plan["onnx"], key)
    return engine.build(bundle, plan, onnx_bytes, log=lambda line: None)


def keygen(path: Path, kind: str = "ed25519", force: bool = False) -> list[Path]:
    """An Ed25519 signing pair (PATH, PATH.pub) or an AES-256 model key (PATH)."""
    if kind == "aes256":
        from edgepipe import encryption

        return [encryption.generate_key(path, force)]
    from edgepipe import signing

    return list(signing.generate_keypair(path, force))


def checked_bundle(bundle: Path, pubkey: Path | None = None) -> dict[str, Any]:
    """The manifest of a bundle about to be timed: its signature first (exit 1 when it fails,
    before anything else of the bundle is read), then every file against the manifest."""
    if pubkey is not None:
        problems = verify(bundle, pubkey)
        if problems:
            raise GateFailedError(f"{bundle}: {problems[0]}")
    manifest = manifest_io.load_manifest(bundle)
    problems = manifest_io.verify_bundle(bundle)
    if problems:
        raise BadInputError(f"{bundle}: does not match its manifest: {problems[0]}")
    return manifest


def _timing(runs: int, warmup: int, threads: int | None, rounds: int, min_duration: float) -> None:
    if runs < 1 or warmup < 0 or (threads is not None and threads < 0):
        raise BadInputError("--runs must be at least 1, --warmup and --threads at least 0")
    if rounds < 1:
        raise BadInputError("--rounds must be at least 1")
    if min_duration < 0:
        raise BadInputError("--min-duration must be at least 0")


def profile(bundle: Path, *, runs: int = 100, warmup: int = 10, threads: int | None = None,
            out: Path | None = None, layers: bool = False, remote: RemoteHost | None = None,
            min_duration: float = 0.0, energy: str | None = None, pubkey: Path | None = None,
            rounds: int = DEFAULT_ROUNDS) -> tuple[Path, dict[str, Any]]:
    """Time a bundle in `rounds` fresh processes (the runs split across them), here with the
    installed runtime or on a device with its run.py; write profile.json atomically.
    `energy` overrides the target's meter (run.py --energy), e.g. a fleet board's own. With
    `pubkey`, a bundle not signed by it is refused (exit 1) before anything else is read."""
    _timing(runs, warmup, threads, rounds, min_duration)
    manifest = checked_bundle(bundle, pubkey)
    options = TimingOptions(runs=runs, warmup=warmup, threads=threads, layers=layers,
                            min_duration=min_duration, energy=energy)
    with LocalPlace() if remote is None else RemotePlace(remote) as place:
        raws = time_rounds(place, [bundle], rounds, options)[0]
    data = make_profile(bundle, manifest, raws, threads, remote=remote.host if remote else None)
    out = out or default_profile_path(bundle)
    write_json_atomically(out, data)
    return out, data


def compare_run(old: Path, new: Path, *, rounds: int = AB_ROUNDS, runs: int = 120, warmup: int = 10,
                threads: int | None = None, remote: RemoteHost | None = None, metric: str = "p50",
                max_slowdown: float = 0.05, alpha: float = 0.01, pubkey: Path | None = None,
                save: Path | None = None, looks: int = AB_LOOKS) -> dict[str, Any]:
    """A/B on one device: both bundles timed in interleaved rounds (A B, B A, …, each a fresh
    process), then the decision of `compare`, pair by pair. The robust gate for a noisy device:
    drift of the device's state hits both sides alike.

    Sequential: after `rounds` pairs the verdict is taken; while it is "inconclusive", `rounds`
    more pairs are timed, up to `looks` looks. Each look tests at alpha / looks (Bonferroni), so
    peeking cannot raise the false-alarm rate above alpha; a clear answer stops early."""
    from edgepipe.compare import compare_profiles

    _timing(runs, warmup, threads, rounds, 0.0)
    if rounds < MIN_AB_ROUNDS:
        raise BadInputError(f"--rounds {rounds}: --run needs at least {MIN_AB_ROUNDS} round pairs (the "
                            "process pair is the unit; fewer cannot reach 1 % significance)")
    if looks < 1:
        raise BadInputError("--looks must be at least 1")
    manifests = [checked_bundle(bundle, pubkey) for bundle in (old, new)]
    per_round = TimingOptions(runs=max(1, runs // rounds) * rounds, warmup=warmup, threads=threads)
    where = remote.host if remote else None
    raws: list[list[dict[str, Any]]] = [[], []]
    with LocalPlace() if remote is None else RemotePlace(remote) as place:
        for look in range(1, looks + 1):  # noqa: B007 - the number of looks taken is reported
            more = time_rounds(place, [old, new], rounds, per_round, first_index=len(raws[0]))
            raws = [raws[0] + more[0], raws[1] + more[1]]
            profiles = [make_profile(bundle, manifest, raw, threads, remote=where)
                        for bundle, manifest, raw in zip((old, new), manifests, raws, strict=True)]
            result = compare_profiles(profiles[0], profiles[1], metric=metric, max_slowdown=max_slowdown,
                                      alpha=alpha / looks, names=(str(old), str(new)), paired=True)
            if result["decision"]["verdict"] != "inconclusive":
                break
    if save is not None:
        for name, data in zip(("baseline", "new"), profiles, strict=True):
            write_json_atomically(save / f"{name}.profile.json", data)
    return {**result, "mode": "interleaved A/B", "device": profiles[0]["device"],
            "sequential": {"looks": look, "max_looks": looks, "alpha_per_look": alpha / looks,
                           "pairs": len(raws[0])}}


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise BadInputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(strict_json.dumps(data, indent=2) + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def prune_scan(model: str, *, eval_data: str, profile: str = "pruned", ratios: Sequence[float] = (),
               inputs: Sequence[str] = (), weights: Path | None = None, trust_pickle: bool = False,
               on_row: Callable[[Any], None] = lambda row: None) -> dict[str, Any]:
    """Accuracy vs pruning ratio for each prunable layer group, each pruned alone, in eager torch."""
    from edgepipe.data.evaluation import open_eval
    from edgepipe.pruning.scan import choose_ratios, scan
    from edgepipe.reference import torch_runner
    from edgepipe.scoring import Evaluator
    from edgepipe.stages.prune import STRUCTURED_SOURCES, PruneSettings, channel_plan, scan_tolerance

    torch = require("torch", "structured pruning")
    resolved = load_profile(profile)
    settings = resolved.stage_settings.get("prune")
    if not isinstance(settings, PruneSettings):
        raise BadInputError(f"profile '{resolved.name}' has no [prune] table")
    bad = [r for r in ratios if not 0 < r < 1]
    if bad:
        raise BadInputError(f"--ratios: {bad[0]:g} is not between 0 and 1 (exclusive)")
    source = load_source(model, trust_pickle=trust_pickle, weights=weights)
    if source.kind not in STRUCTURED_SOURCES:
        raise BadInputError(f"prune-scan needs a PyTorch nn.Module source; {model} is {source.kind}")
    overrides = parse_input_specs(inputs)
    specs = resolve_inputs(source.declared_inputs(overrides), overrides)
    data = open_eval(eval_data, specs, limit=settings.eval_count, preprocess=settings.preprocess,
                     seed=settings.seed)
    evaluator = Evaluator(data, torch_runner(source.module, specs, model))
    first = data.samples[0].feed if data.samples else None
    example = tuple(torch.from_numpy(first[s.name].copy()) if first else torch.zeros(s.shape)
                    for s in specs)
    # Each group is varied alone; magnitude ranks channels (no data for Taylor gradients here).
    plan = dataclasses.replace(channel_plan(settings), ratio=0.0, layer_ratios={}, global_pruning=False,
                   importance="l1" if settings.importance == "taylor" else settings.importance)
    ratios = list(ratios) or settings.scan_ratios
    rows = scan(source.module, example, specs, plan, ratios, evaluator, on_row=on_row)
    tolerance = scan_tolerance(settings, evaluator.primary)
    return {"model": model, "eval": data.origin, "primary": evaluator.primary,
            "float": evaluator.float_primary, "ratios": ratios, "tolerance": tolerance,
            "rows": [r.to_json() for r in rows], "suggested": choose_ratios(rows, max(ratios), tolerance)}


def inspect(spec: str, *, trust_pickle: bool = False) -> dict[str, Any]:
    """What a bundle or any model `build` accepts holds."""
    path = Path(spec)
    if path.is_dir():
        manifest = manifest_io.full_manifest(path)
        return {"kind": "bundle", **manifest_io.summary(manifest, path)}
    source = load_source(spec, trust_pickle=trust_pickle)
    size = sum(f.stat().st_size for f in source.files)
    if source.kind == "onnx":
        from edgepipe import onnx_model

        return {"kind": "onnx", "path": spec, "size_bytes": size,
                **onnx_model.describe(source.onnx_model)}
    module = source.module.module() if source.kind == "exported_program" else source.module
    inputs = ([s.to_json() for s in source.declared_inputs({})] if source.example_inputs
              else "not recorded: give --input shapes when building")
    return {"kind": source.kind, "path": spec, "size_bytes": size,
            "class": type(module).__name__, "inputs": inputs,
            "parameters": sum(p.numel() for p in module.parameters())}


def layer_diff(source: Path, bundle: Path, *, data: str | None = None, samples: int = 8, seed: int = 0,
               html: Path | None = None) -> dict[str, Any]:
    """Per-layer error of a bundle against its float ONNX source (edgepipe diff)."""
    from itertools import islice

    from edgepipe import layer_diff as differ
    from edgepipe.artifact import TensorSpec
    from edgepipe.runtime.bundle import load_manifest
    from edgepipe.runtime.feeds import random_inputs

    if samples < 1:
        raise BadInputError("--samples must be at least 1")
    if not source.is_file():
        raise BadInputError(f"{source}: no such file")
    manifest = load_manifest(bundle)
    if data is None:
        feeds = [random_inputs(manifest["inputs"], seed + index) for index in range(samples)]
    else:
        specs = tuple(TensorSpec(s["name"], tuple(s["shape"]), s["dtype"], s.get("layout"), s.get("values"))
                      for s in manifest["inputs"])
        feeds = list(islice(open_samples(data, specs, flag="--data", seed=seed).samples(samples), samples))
    with tempfile.TemporaryDirectory(prefix="edgepipe-diff-") as work:
        result = differ.diff(source, bundle, feeds, Path(work))
    result["data"] = data or f"{samples} seeded random inputs"
    if html is not None:
        differ.write_html(result, html)
    return result
