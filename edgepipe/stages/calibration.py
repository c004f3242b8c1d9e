"""Read user-supplied sample inputs (`--calib PATH`): `.npy`, `.npz`, or a folder of them.

An array has exactly the input's shape (one sample), one extra leading axis (a
stack of samples), or a multiple of the input's batch size along its first axis
(e.g. 64x1x8x8 for a 1x1x8x8 input: 64 samples). In a `.npz`, arrays are matched to inputs by name; a
single-input model may also use a bare `.npy`. Shapes and dtypes must match
exactly: a silent cast would hide a preprocessing bug.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from edgepipe.artifact import TensorSpec
from edgepipe.errors import BadInputError, first_line

Feed = dict[str, np.ndarray]


def _sample_files(path: Path) -> list[Path]:
    if not path.exists():
        raise BadInputError(f"--calib {path}: no such file or directory")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.suffix in (".npy", ".npz") and p.is_file())
    if not files:
        raise BadInputError(f"--calib {path}: the folder holds no .npy or .npz files")
    return files


def _arrays_of(path: Path, specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    try:
        if path.suffix == ".npy":
            if len(specs) != 1:
                raise BadInputError(
                    f"{path}: a .npy file fits a single-input model; this one has inputs "
                    f"{', '.join(s.name for s in specs)}: use a .npz with arrays named after them"
                )
            return {specs[0].name: np.load(path, allow_pickle=False)}
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
            missing = [s.name for s in specs if s.name not in arrays]
            if missing:
                raise BadInputError(f"{path}: no array named '{missing[0]}' "
                                    f"(found: {', '.join(arrays) or 'none'})")
            return {s.name: arrays[s.name] for s in specs}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise BadInputError(f"{path}: unreadable sample file ({first_line(exc)})") from None
    raise BadInputError(f"{path}: sample files must be .npy or .npz")


def _as_stack(path: Path, spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    shape = tuple(int(d) for d in spec.shape)
    if array.dtype.name != spec.dtype:
        raise BadInputError(f"{path}: '{spec.name}' has dtype {array.dtype.name}, the model "
                            f"expects {spec.dtype} (convert with .astype(np.{spec.dtype}))")
    if tuple(array.shape) == shape:
        return array[None]
    if tuple(array.shape[1:]) == shape:
        return array
    batch = shape[0] if shape else 0
    if (shape and array.ndim == len(shape) and tuple(array.shape[1:]) == shape[1:]
            and batch > 0 and array.shape[0] % batch == 0):
        # A batch of N*batch along the model's own batch axis: N samples.
        return array.reshape(array.shape[0] // batch, *shape)
    raise BadInputError(f"{path}: '{spec.name}' has shape {list(array.shape)}, the model "
                        f"expects {list(shape)}, a stack of them, or a multiple of its batch")


def load_samples(path: Path, specs: tuple[TensorSpec, ...], limit: int) -> list[Feed]:
    """Up to `limit` feeds, in file order; an empty set is an error, never random data."""
    samples: list[Feed] = []
    for file in _sample_files(path):
        arrays = _arrays_of(file, specs)
        stacks = {s.name: _as_stack(file, s, arrays[s.name]) for s in specs}
        counts = {len(stack) for stack in stacks.values()}
        if len(counts) != 1:
            raise BadInputError(f"{file}: inputs hold different numbers of samples")
        for index in range(counts.pop()):
            samples.append({name: np.ascontiguousarray(stack[index])
                            for name, stack in stacks.items()})
            if len(samples) == limit:
                return samples
    if not samples:
        raise BadInputError(f"--calib {path}: holds no samples")
    return samples
