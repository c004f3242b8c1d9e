"""Sample inputs a user supplies (`--calib`, `--eval`): read lazily, checked strictly.

Accepted forms:
- `.npy` / `.npz` files or a folder of them. An array has exactly the input's shape
  (one sample), one extra leading axis (a stack), or a multiple of the input's batch
  along its first axis (64x1x8x8 for a 1x1x8x8 input: 64 samples). In a `.npz`
  arrays are matched to inputs by name (a `labels` array is kept for evaluation);
  a single-input model may use a bare `.npy`.
- A folder of images (jpg/png/bmp/webp, recursive), turned into tensors by a
  declared `ImagePreprocessing`; sub-folders are classes (ImageFolder layout) when
  labels are wanted.
- `file.py:fn`, a function yielding `{input_name: array}` dicts.
- `random`: seeded random data, only when asked for by name; reports then say the
  accuracy is unknown.

Samples are produced one at a time (a file at a time for arrays), so a calibration
set of any size streams. Shapes and dtypes must match exactly: a silent cast would
hide a preprocessing bug.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe.artifact import TensorSpec
from edgepipe.data.preprocessing import ImagePreprocessing, ResolvedPreprocessing, image_files, resolve
from edgepipe.errors import BadInputError, EdgepipeError, first_line
from edgepipe.python_callable import load_python_callable, split_spec, user_error
from edgepipe.runtime.feeds import draw, load_npz
from edgepipe.settings import read_toml, validate_as

Feed = dict[str, np.ndarray]
RANDOM = "random"
LABELS = "labels"


@dataclass(frozen=True)
class LabelledSample:
    feed: Feed
    label: int | None
    boxes: Any = None  # detection data: a detection_sets.GroundTruth


@dataclass(frozen=True)
class SampleSource:
    """Where samples come from and how; iterate with `samples()` (streams)."""

    spec: str
    kind: str  # arrays | images | callable | random
    preprocessing: ResolvedPreprocessing | None
    _iterate: Callable[[], Iterator[LabelledSample]]

    @property
    def is_random(self) -> bool:
        return self.kind == RANDOM

    def labelled(self, limit: int | None = None) -> Iterator[LabelledSample]:
        """Up to `limit` samples in a fixed order; none at all is an error."""
        count = 0
        for sample in self._iterate():
            yield sample
            count += 1
            if count == limit:
                return
        if count == 0:
            raise BadInputError(f"{self.spec}: holds no samples")

    def samples(self, limit: int | None = None) -> Iterator[Feed]:
        return (sample.feed for sample in self.labelled(limit))

    def describe(self, count: int) -> str:
        how = {"arrays": "arrays", "images": "images", "callable": "samples from",
               RANDOM: "seeded random samples"}[self.kind]
        return f"{count} {how} {'' if self.is_random else self.spec}".strip()


# --------------------------------------------------------------------------- arrays


def _array_files(path: Path, flag: str) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise BadInputError(f"{flag} {path}: neither a file nor a folder (a device or a pipe?)")
    files = sorted(p for p in path.rglob("*") if p.suffix in (".npy", ".npz") and p.is_file())
    if not files:
        raise BadInputError(f"{flag} {path}: the folder holds no .npy, .npz or image files")
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
            arrays = load_npz(path)
            missing = [s.name for s in specs if s.name not in arrays]
            if missing:
                raise BadInputError(f"{path}: no array named '{missing[0]}' "
                                    f"(found: {', '.join(arrays) or 'none'})")
            return {name: arrays[name] for name in [*(s.name for s in specs), LABELS] if name in arrays}
    except BadInputError:
        raise
    except (ValueError, OSError, EOFError, KeyError, TypeError, zipfile.BadZipFile, NotImplementedError,
            RuntimeError) as exc:  # a member that is no .npy, an unsupported compression, ...
        raise BadInputError(f"{path}: unreadable sample file ({type(exc).__name__}: "
                            f"{first_line(exc)})") from None
    raise BadInputError(f"{path}: sample files must be .npy or .npz")


def check_sample(where: str, spec: TensorSpec, array: Any) -> np.ndarray:
    """One sample for one input, exactly as the model takes it."""
    if isinstance(array, np.generic) and not spec.shape:
        array = np.asarray(array)  # np.int64(16000) for a scalar input, as a user writes it
    if not isinstance(array, np.ndarray):
        raise BadInputError(f"{where}: '{spec.name}' is a {type(array).__name__}, not a numpy array")
    if array.dtype.name != spec.dtype:
        raise BadInputError(f"{where}: '{spec.name}' has dtype {array.dtype.name}, the model "
                            f"expects {spec.dtype} (convert with .astype(np.{spec.dtype}))")
    if spec.is_static and tuple(array.shape) != tuple(int(d) for d in spec.shape):
        raise BadInputError(f"{where}: '{spec.name}' has shape {list(array.shape)}, the model "
                            f"expects {list(spec.shape)}")
    _check_finite(where, spec, array)
    return np.asarray(array, order="C")  # keeps a 0-d scalar 0-d, unlike ascontiguousarray


def _check_finite(where: str, spec: TensorSpec, array: np.ndarray) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = "NaN" if np.isnan(array).any() else "infinite"
        raise BadInputError(f"{where}: '{spec.name}' holds {bad} values; calibration and parity need "
                            "finite inputs")


def _as_stack(path: Path, spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    shape = tuple(int(d) for d in spec.shape)
    if array.dtype.name != spec.dtype:
        check_sample(str(path), spec, array)  # raises the dtype message
    _check_finite(str(path), spec, array)
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


def _labels_for(path: Path, labels: np.ndarray | None, count: int, batch: int) -> list[int | None]:
    if labels is None:
        return [None] * count
    labels = np.asarray(labels).reshape(-1)
    if labels.dtype.kind not in "iu" or len(labels) != count * batch:
        raise BadInputError(f"{path}: 'labels' must hold one integer class per image "
                            f"({count * batch}), found {len(labels)} of {labels.dtype}")
    if batch == 1:
        return [int(v) for v in labels]
    return [None] * count  # labels of batched samples are not used for top-k


def _array_samples(path: Path, specs: tuple[TensorSpec, ...], flag: str) -> Iterator[LabelledSample]:
    for file in _array_files(path, flag):
        arrays = _arrays_of(file, specs)
        stacks = {s.name: _as_stack(file, s, arrays[s.name]) for s in specs}
        counts = {len(stack) for stack in stacks.values()}
        if len(counts) != 1:
            raise BadInputError(f"{file}: inputs hold different numbers of samples")
        count = counts.pop()
        batch = int(specs[0].shape[0]) if specs[0].shape and isinstance(specs[0].shape[0], int) else 1
        labels = _labels_for(file, arrays.get(LABELS), count, batch)
        for index in range(count):
            yield LabelledSample({name: np.asarray(stack[index], order="C")
                                  for name, stack in stacks.items()}, labels[index])


# --------------------------------------------------------------------------- images


def _image_samples(files: list[Path], root: Path, spec: TensorSpec, pre: ResolvedPreprocessing,
                   classes: list[str] | None) -> Iterator[LabelledSample]:
    batch = int(spec.shape[0])
    for start in range(0, len(files) - batch + 1, batch):
        chunk = files[start:start + batch]
        array = np.stack([pre.image_to_array(file) for file in chunk])
        label = None
        if classes is not None and batch == 1:
            label = classes.index(chunk[0].relative_to(root).parts[0])
        yield LabelledSample({spec.name: array}, label)


def image_classes(folder: Path) -> list[str] | None:
    """Class names of an ImageFolder layout (sorted sub-folders), or None."""
    folders = sorted(p.name for p in folder.iterdir() if p.is_dir())
    return folders or None


# --------------------------------------------------------------------------- callables


def _callable_samples(spec: str, specs: tuple[TensorSpec, ...]) -> Iterator[LabelledSample]:
    produced = load_python_callable(spec)()  # what it raises is named, SystemExit included
    try:
        iterator = iter(produced)
    except TypeError:
        raise BadInputError(f"{spec}: must return or yield dicts of {{input name: array}} (it returned "
                            f"a {type(produced).__name__})") from None
    index = 0
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except EdgepipeError:
            raise
        except (Exception, SystemExit) as exc:
            raise user_error(spec, exc, f" after {index} samples") from None
        if not isinstance(item, dict):
            raise BadInputError(f"{spec}: sample {index} is a {type(item).__name__}, not a dict")
        missing = [s.name for s in specs if s.name not in item]
        if missing:
            raise BadInputError(f"{spec}: sample {index} has no '{missing[0]}'")
        yield LabelledSample({s.name: check_sample(f"{spec} sample {index}", s, item[s.name])
                              for s in specs}, None)
        index += 1


# --------------------------------------------------------------------------- random


def random_samples(specs: tuple[TensorSpec, ...], count: int, seed: int,
                   examples: Mapping[str, np.ndarray] | None = None) -> list[Feed]:
    """Seeded inputs; the first sample is the model's own example where it has one.

    Values come from what `--input NAME=...` declares; else integer inputs (token ids, masks,
    indices) are drawn from the example's value range, or from {0, 1}, which is valid for any
    embedding or mask. The draw itself is the device's (`runtime.feeds.draw`), so `run.py`
    and `edgepipe profile` feed a bundle what the build fed it.
    """
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(count):
        feed: Feed = {}
        for spec in specs:
            shape = tuple(int(d) for d in spec.shape)
            example = None if examples is None else examples.get(spec.name)
            if example is not None and tuple(example.shape) != shape:
                example = None
            values = spec.values
            if values is None and example is not None and np.dtype(spec.dtype).kind in "iu":
                values = f"{int(example.min())}..{int(example.max())}"
            if index == 0 and example is not None and spec.values is None:
                feed[spec.name] = np.asarray(example, order="C")
            else:
                feed[spec.name] = draw(rng, {**spec.to_json(), "shape": shape, "values": values})
        samples.append(feed)
    return samples


def _random_samples(specs: tuple[TensorSpec, ...], seed: int) -> Iterator[LabelledSample]:
    index = 0
    while True:
        yield LabelledSample(random_samples(specs, 1, seed + index)[0], None)
        index += 1


# --------------------------------------------------------------------------- entry points


def open_samples(spec: str | Path, specs: tuple[TensorSpec, ...], *, flag: str = "--calib",
                 preprocess: ImagePreprocessing | None = None, seed: int = 0,
                 with_labels: bool = False, detection: bool = False) -> SampleSource:
    """A lazily read sample source; checks what can be checked without reading it all. Images
    for a detector (`detection`) are letterboxed unless their preprocessing says otherwise."""
    text = str(spec)
    if text == RANDOM:
        return SampleSource(text, RANDOM, None, lambda: _random_samples(specs, seed))
    if split_spec(text):
        return SampleSource(text, "callable", None, lambda: _callable_samples(text, specs))
    path = Path(text)
    if not path.exists():
        raise BadInputError(f"{flag} {path}: no such file or directory")
    if path.is_dir():
        images = image_files(path)
        if images:
            if len(specs) != 1:
                raise BadInputError(f"{flag} {path}: images fit a single-input model; this one has "
                                    f"inputs {', '.join(s.name for s in specs)}")
            resolved = resolve(_declared_for(path, preprocess), specs[0], detection=detection)
            classes = image_classes(path) if with_labels else None
            # A fixed-seed shuffle, so the first N of an ImageFolder span every class.
            order = np.random.default_rng(seed).permutation(len(images))
            shuffled = [images[i] for i in order]
            return SampleSource(text, "images", resolved,
                                lambda: _image_samples(shuffled, path, specs[0], resolved, classes))
    _array_files(path, flag)  # an empty folder fails now, not halfway through a build
    return SampleSource(text, "arrays", None, lambda: _array_samples(path, specs, flag))


def _declared_for(folder: Path, preprocess: ImagePreprocessing | None) -> ImagePreprocessing:
    """A `preprocess.toml` beside the images wins: the data set knows how it was made."""
    sidecar = folder / "preprocess.toml"
    if sidecar.is_file():
        return validate_as(ImagePreprocessing, read_toml(sidecar), str(sidecar))
    return preprocess or ImagePreprocessing()


def load_samples(path: str | Path, specs: tuple[TensorSpec, ...], limit: int) -> list[Feed]:
    """Up to `limit` feeds, in order; an empty set is an error, never random data."""
    return list(open_samples(path, specs).samples(limit))
