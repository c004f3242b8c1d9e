"""Recognise and load what the user hands to `edgepipe build`.

Accepted: `.onnx` (external data included), `file.py:factory`, TorchScript
archives, `torch.export` `.pt2` archives, and pickled modules (`torch.save(model)`)
only with an explicit opt-in, because unpickling runs arbitrary code.
"""

from __future__ import annotations

import hashlib
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgepipe.artifact import TensorSpec, layout_guess
from edgepipe.errors import BadInputError, first_line
from edgepipe.extras import require
from edgepipe.python_callable import load_python_callable
from edgepipe.shapes import EXAMPLE, InputOverride

SourceKind = Literal["onnx", "factory", "torchscript", "exported_program", "pickle"]
TORCH_KINDS = ("factory", "torchscript", "exported_program", "pickle")
# Factories are called under a fixed seed so randomly initialised example
# models give byte-identical builds.
FACTORY_SEED = 0


@dataclass
class SourceModel:
    spec: str
    kind: SourceKind
    name: str
    files: tuple[Path, ...]
    sha256: str
    onnx_model: Any = None  # onnx.ModelProto for ONNX sources
    module: Any = None  # nn.Module, ScriptModule or ExportedProgram for torch sources
    example_inputs: dict[str, Any] | None = None  # name -> torch.Tensor
    notes: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.files[0]

    def declared_inputs(self, overrides: Mapping[str, InputOverride]) -> tuple[TensorSpec, ...]:
        """The model's inputs as far as the source itself says (shapes may be dynamic)."""
        if self.kind == "onnx":
            from edgepipe.onnx_model import graph_inputs

            return graph_inputs(self.onnx_model)
        if self.example_inputs:
            return tuple(
                TensorSpec(name, tuple(t.shape), str(t.dtype).removeprefix("torch."),
                           layout_guess(tuple(t.shape)))
                for name, t in self.example_inputs.items()
            )
        shapeless = [o.name for o in overrides.values() if o.shape is None]
        if not overrides or shapeless:
            raise BadInputError(
                f"{self.spec}: the model carries no example inputs: give "
                f"{'each input' if not shapeless else repr(shapeless[0])}'s shape "
                f"with --input NAME:SHAPE (e.g. --input {EXAMPLE})"
            )
        return tuple(
            TensorSpec(o.name, o.shape, o.dtype or "float32", layout_guess(o.shape))
            for o in overrides.values()
        )


# A torch archive holds float weights, which barely compress; a member that inflates
# a hundredfold to more than this is a decompression bomb, refused before anything reads it.
BOMB_RATIO = 100
BOMB_MIN_BYTES = 64 * 2**20


def _zip_names_checked(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BadInputError(f"{path}: not a readable zip archive ({first_line(exc)})") from None
    for member in members:
        if member.file_size > BOMB_MIN_BYTES and member.file_size > BOMB_RATIO * max(member.compress_size, 1):
            raise BadInputError(
                f"{path}: refused: member '{member.filename}' inflates {member.compress_size} bytes to "
                f"{member.file_size} (more than {BOMB_RATIO}:1), which model weights never do")
    return [member.filename for member in members]


def _sha256_of(files: Sequence[Path], extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _check_readable_file(path: Path) -> None:
    if not path.exists():
        raise BadInputError(f"{path}: no such file")
    if not path.is_file():
        raise BadInputError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise BadInputError(f"{path}: empty file")


def load_source(spec: str, *, trust_pickle: bool = False, weights: Path | None = None) -> SourceModel:
    """Load the model named by `spec`; every failure is one line naming the file."""
    source = _load_source(spec, trust_pickle, weights)
    _check_finite_weights(source)
    return source


def _check_finite_weights(source: SourceModel) -> None:
    """A NaN weight makes every output NaN and every accuracy check meaningless: refuse it by
    name, before anything is run. Infinities are legitimate constants (a Clip's open bound, a
    -inf attention mask; torch 1.11 exports clamp(min=x) with max=inf); if one does reach an
    output, parity refuses the non-finite value there."""
    import numpy as np

    if source.kind == "onnx":
        from onnx import numpy_helper

        from edgepipe.onnx_model import all_tensors

        for tensor in all_tensors(source.onnx_model.graph):
            values = numpy_helper.to_array(tensor)
            if values.dtype.kind in "fc" and np.isnan(values).any():
                raise BadInputError(f"{source.spec}: weight '{tensor.name}' holds NaN values")
        return
    module = source.module.module() if source.kind == "exported_program" else source.module
    state = getattr(module, "state_dict", None)
    import torch

    for name, value in (state().items() if callable(state) else ()):
        if isinstance(value, torch.Tensor) and value.is_floating_point() and bool(value.isnan().any()):
            raise BadInputError(f"{source.spec}: weight '{name}' holds NaN values")


def _load_source(spec: str, trust_pickle: bool, weights: Path | None) -> SourceModel:
    file_part, _, function = spec.rpartition(":")
    if file_part.endswith(".py") and function:
        return _load_factory(spec, Path(file_part), function, weights)
    path = Path(spec)
    _check_readable_file(path)
    if weights is not None:
        raise BadInputError("--weights applies to a file.py:factory model only")
    if path.suffix == ".onnx":
        return _load_onnx(spec, path)
    if zipfile.is_zipfile(path):
        names = _zip_names_checked(path)
        if any(n.endswith("/archive_format") for n in names):
            return _load_exported_program(spec, path)
        if any("/code/" in n for n in names):
            return _load_torchscript(spec, path)
        if any(n.endswith("/data.pkl") for n in names):
            return _load_pickle(spec, path, trust_pickle)
    if path.suffix in (".pt", ".pth", ".bin", ".pkl"):
        return _load_pickle(spec, path, trust_pickle)
    raise BadInputError(
        f"{path}: unrecognised model format (expected .onnx, a torch.export .pt2, a TorchScript "
        "or torch.save archive, or file.py:factory)"
    )


def _load_onnx(spec: str, path: Path) -> SourceModel:
    from edgepipe.onnx_model import check_external_data_paths, check_tensor_sizes, load_checked

    model = load_checked(path)
    if model.ByteSize() < 2**31 - 1:  # shape inference needs the model in one protobuf
        check_tensor_sizes(model, path)
    files = (path, *check_external_data_paths(onnx_header(path), path))
    return SourceModel(spec=spec, kind="onnx", name=path.stem, files=files,
                       sha256=_sha256_of(files), onnx_model=model)


def onnx_header(path: Path):
    """The model without its external data: enough to see where that data lives."""
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _torch(purpose: str):
    return require("torch", purpose)


def _load_factory(spec: str, file: Path, function: str, weights: Path | None) -> SourceModel:
    _check_readable_file(file)
    torch = _torch(f"building {spec}")
    factory = load_python_callable(spec)
    torch.manual_seed(FACTORY_SEED)
    result = factory()  # guarded: what it raises (sys.exit too) is one line naming it
    model, examples = (result if isinstance(result, tuple) and len(result) == 2 else (result, None))
    if not isinstance(model, torch.nn.Module):
        raise BadInputError(
            f"{spec} returned {type(model).__name__}; expected an nn.Module "
            "or (nn.Module, example_inputs)"
        )
    files: tuple[Path, ...] = (file,)
    if weights is not None:
        _load_state_dict(torch, model, weights)
        files = (file, weights)
    return SourceModel(spec=spec, kind="factory", name=function, files=files,
                       sha256=_sha256_of(files, extra=function), module=model.eval(),
                       example_inputs=_named_examples(torch, spec, examples))


def _load_state_dict(torch, model, weights: Path) -> None:
    _check_readable_file(weights)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BadInputError(f"{weights}: not a loadable state dict ({first_line(exc)})") from None
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise BadInputError(f"{weights}: holds {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BadInputError(f"{weights}: does not fit the model: {first_line(exc)}") from None


def _named_examples(torch, spec: str, examples: Any) -> dict[str, Any] | None:
    if examples is None:
        return None
    if isinstance(examples, torch.Tensor):
        return {"input": examples}
    if isinstance(examples, Mapping):
        named = dict(examples)
    elif isinstance(examples, list | tuple):
        named = {f"input_{i}": t for i, t in enumerate(examples)}
    else:
        raise BadInputError(f"{spec}: example inputs must be a tensor, a tuple or a dict of them")
    if not all(isinstance(t, torch.Tensor) for t in named.values()):
        raise BadInputError(f"{spec}: every example input must be a torch.Tensor")
    return named


def _load_torchscript(spec: str, path: Path) -> SourceModel:
    torch = _torch(f"loading TorchScript archive {path}")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise BadInputError(f"{path}: not a loadable TorchScript archive ({first_line(exc)})") from None
    return SourceModel(spec=spec, kind="torchscript", name=path.stem, files=(path,),
                       sha256=_sha256_of((path,)), module=module.eval())


def _load_exported_program(spec: str, path: Path) -> SourceModel:
    torch = _torch(f"loading ExportedProgram {path}")
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise BadInputError(f"{path}: not a loadable torch.export archive ({first_line(exc)})") from None
    names = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    examples = None
    if program.example_inputs is not None:
        args, kwargs = program.example_inputs
        flat = [*args, *kwargs.values()]
        if len(flat) == len(names) and all(isinstance(t, torch.Tensor) for t in flat):
            examples = dict(zip(names, flat, strict=True))
    return SourceModel(spec=spec, kind="exported_program", name=path.stem, files=(path,),
                       sha256=_sha256_of((path,)), module=program, example_inputs=examples)


def _load_pickle(spec: str, path: Path, trust_pickle: bool) -> SourceModel:
    torch = _torch(f"loading {path}")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        content = None  # not plain tensors: a pickled object, handled below
    else:
        if isinstance(content, Mapping):
            raise BadInputError(
                f"{path}: is a state dict, not a model: pair it with the code that builds the "
                "model: edgepipe build file.py:factory --weights " + str(path)
            )
    if not trust_pickle:
        raise BadInputError(
            f"{path}: is a pickled Python object; unpickling runs arbitrary code, so it is loaded "
            "only with --trust-pickle (use it only for files you trust)"
        )
    # Unpickling imports the model's classes; find them where `python` would: the cwd.
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise BadInputError(f"{path}: cannot be unpickled ({first_line(exc)})") from None
    finally:
        sys.path.remove(str(Path.cwd()))
    if not isinstance(module, torch.nn.Module):
        raise BadInputError(f"{path}: holds {type(module).__name__}, not an nn.Module")
    return SourceModel(spec=spec, kind="pickle", name=path.stem, files=(path,),
                       sha256=_sha256_of((path,)), module=module.eval(),
                       notes=["loaded with --trust-pickle"])

