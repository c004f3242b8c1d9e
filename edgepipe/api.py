"""The Python API: build, inspect, verify, profile. The CLI is a thin layer over it."""

from __future__ import annotations

import dataclasses
import json
import os
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
from edgepipe.config import Profile, load_target
from edgepipe.data.samples import RANDOM, open_samples
from edgepipe.errors import BadInputError, MissingExtraError
from edgepipe.extras import require
from edgepipe.pipeline import run_stages
from edgepipe.profiler.local import run_bundle_benchmark
from edgepipe.profiler.remote import RemoteHost, run_remote_benchmark
from edgepipe.profiler.report import default_profile_path, make_profile
from edgepipe.profiles import load_profile
from edgepipe.reference import make_reference
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
    weights: Path | None = None,
    force: bool = False,
    trust_pickle: bool = False,
    skip_passes: Sequence[str] = (),
    sign: Path | None = None,
    encrypt: bool = False,
    encrypt_key: Path | None = None,
    on_stage: Callable[[StageReport], None] = lambda report: None,
    auto_selection: dict[str, Any] | None = None,
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
    resolved_target = load_target(target)
    resolved_profile = with_skipped_passes(load_profile(profile or resolved_target.default_profile),
                                           skip_passes)
    resolved_profile = with_prune_ratio(resolved_profile, prune_ratio)
    overrides = parse_input_specs(inputs)
    target_label = resolved_target.name if target.endswith(".toml") else target
    out = out or Path("dist") / f"{model_name(model)}-{target_label}"
    if resolved_profile.candidates:
        from edgepipe import auto_select

        common = {"inputs": inputs, "eval_data": eval_data, "train": train, "prune_ratio": prune_ratio,
                  "weights": weights,
                  "trust_pickle": trust_pickle, "skip_passes": skip_passes, "on_stage": on_stage}
        out.parent.mkdir(parents=True, exist_ok=True)
        selection = auto_select.select(build, model, target=resolved_target, target_spec=target,
                                       profile=resolved_profile, calib=None if calib is None else str(calib),
                                       out=out, **common)
        return build(model, target=target, profile=selection["chosen"], out=out, calib=calib, force=force,
                     sign=sign, encrypt=encrypt, encrypt_key=encrypt_key,
                     auto_selection={"profile": resolved_profile.name, **selection}, **common)
    backend = get_backend(resolved_target.backend)
    try:
        require(backend.runtime_module, f"target '{resolved_target.name}' (backend {backend.name})")
    except MissingExtraError as exc:
        if resolved_target.name != target:  # reached through an alias such as `cpu`
            raise MissingExtraError(exc.module, exc.extra,
                                    f"target '{target}' (= {resolved_target.name} on this host; "
                                    f"--target onnxruntime-cpu needs no extra)") from None
        raise
    try:
        with staging_area(out, force) as staging:
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
                                                 if o.shape_range is not None})
            result = run_stages(context, on_stage)
            manifest = write_bundle(
                staging / "bundle", source=source, target=resolved_target, target_spec=target,
                profile=resolved_profile, result=result, reference=reference,
                backend_versions=backend.runtime_versions(), seconds=perf_counter() - started,
                auto_selection=auto_selection, encrypt_key=model_key)
            if signing_key is not None:
                from edgepipe import signing

                signing.sign_bundle(staging / "bundle", signing_key)
            publish(staging, out)
    except OSError as exc:  # a full disk or a vanished folder mid-build: nothing was published
        raise BadInputError(f"cannot write the bundle ({exc.filename or out}): "
                            f"{exc.strerror or exc}") from None
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


def profile(bundle: Path, *, runs: int = 100, warmup: int = 10, threads: int | None = None,
            out: Path | None = None, layers: bool = False, remote: RemoteHost | None = None,
            min_duration: float = 0.0, energy: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Time a bundle with its own runner in a fresh process; write profile.json atomically.
    `energy` overrides the target's meter (run.py --energy), e.g. a fleet board's own."""
    if runs < 1 or warmup < 0 or (threads is not None and threads < 0):
        raise BadInputError("--runs must be at least 1, --warmup and --threads at least 0")
    manifest = manifest_io.load_manifest(bundle)
    problems = manifest_io.verify_bundle(bundle)
    if problems:
        raise BadInputError(f"{bundle}: does not match its manifest: {problems[0]}")
    if min_duration < 0:
        raise BadInputError("--min-duration must be at least 0")
    if remote is None:
        raw = run_bundle_benchmark(bundle, runs=runs, warmup=warmup, threads=threads, layers=layers,
                                   min_duration=min_duration, energy=energy)
    else:
        raw = run_remote_benchmark(bundle, remote, runs=runs, warmup=warmup, threads=threads, layers=layers,
                                   min_duration=min_duration, energy=energy)
    data = make_profile(bundle, manifest, raw, threads, remote=remote.host if remote else None)
    out = out or default_profile_path(bundle)
    write_json_atomically(out, data)
    return out, data


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise BadInputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(json.dumps(data, indent=2) + "\n")
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
        manifest = manifest_io.load_manifest(path)
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
