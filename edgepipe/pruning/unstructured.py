"""Unstructured magnitude sparsity and the 2:4 pattern, applied to an ONNX model's weights.

Works on the ONNX graph so ONNX-only sources can use it; torch.nn.utils.prune and
torch-pruning only reach torch modules, and no ONNX tool zeroes weights by
magnitude. The weights keep their dense shape: dense runtimes run exactly as fast
as before, the file deflates smaller, and only sparse-aware kernels (TensorRT's
2:4 on Ampere/Orin tensor cores) turn the pattern into speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepipe import onnx_model

GROUP = 4  # 2:4: at most two non-zeros in every four consecutive weights along the reduction axis


@dataclass(frozen=True)
class SparseLayer:
    node: str
    weight: str
    shape: tuple[int, ...]
    sparsity: float
    note: str = ""


def _reduction_axis(node) -> int:
    """The weight axis a Conv/Gemm/MatMul sums over, along which 2:4 groups run."""
    if node.op_type == "Conv":
        return 1  # [out, in/group, kh, kw]
    if node.op_type == "Gemm":
        return 1 if next((a.i for a in node.attribute if a.name == "transB"), 0) else 0
    return 0  # MatMul(A, B): B is [K, N]


def _weight_nodes(model, skip: set[str], keep_first_last: bool):
    """(node, weight initializer, reduction axis) for every Conv/Gemm/MatMul with a constant weight."""
    inits = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        if node.input[1] not in inits or node.name in skip:
            continue
        found.append((node, inits[node.input[1]], _reduction_axis(node)))
    if keep_first_last and len(found) > 1:
        found = found[1:-1]
    return found


def _two_of_four(weights: np.ndarray, axis: int) -> np.ndarray | None:
    """Zero the two smallest of every four along `axis`; None when the axis is not a multiple of 4."""
    moved = np.moveaxis(weights, axis, -1)
    if moved.shape[-1] % GROUP:
        return None
    groups = moved.reshape(-1, GROUP)
    order = np.argsort(np.abs(groups), axis=1, kind="stable")
    mask = np.ones_like(groups, dtype=bool)
    np.put_along_axis(mask, order[:, :2], False, axis=1)
    return np.moveaxis((groups * mask).reshape(moved.shape), -1, axis)


def follows_two_of_four(weights: np.ndarray, axis: int) -> bool:
    moved = np.moveaxis(weights, axis, -1)
    if moved.shape[-1] % GROUP:
        return False
    return bool((np.count_nonzero(moved.reshape(-1, GROUP), axis=1) <= 2).all())


def two_of_four_layers(path: Path) -> int:
    """How many weight layers follow the 2:4 pattern (and have zeros), int8 QDQ weights included:
    TensorRT runs those on sparse tensor cores when the engine is built with sparsity enabled."""
    from onnx import numpy_helper

    model = onnx_model.load_plain(path)
    inits = {t.name: t for t in model.graph.initializer}
    dequantized = {n.output[0]: n.input[0] for n in model.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    count = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        name = dequantized.get(node.input[1], node.input[1])
        if name not in inits:
            continue
        weights = numpy_helper.to_array(inits[name])
        if weights.ndim >= 2 and not weights.all() and follows_two_of_four(weights, _reduction_axis(node)):
            count += 1
    return count


def sparsify(source: Path, output: Path, *, pattern: str, sparsity: float,
             skip: set[str] = frozenset(), keep_first_last: bool = True) -> list[SparseLayer]:
    """Write `source` with its weights sparsified; `pattern` is "unstructured" or "2:4"."""
    from onnx import numpy_helper

    model = onnx_model.load_plain(source)
    layers: list[SparseLayer] = []
    targets = _weight_nodes(model, set(skip), keep_first_last)
    if pattern == "unstructured" and targets:
        # One global threshold: layers with many small weights give more, as magnitude pruning intends.
        magnitudes = np.concatenate([np.abs(numpy_helper.to_array(t)).ravel() for _, t, _ in targets])
        cut = int(sparsity * magnitudes.size)
        threshold = np.partition(magnitudes, cut)[cut] if 0 < cut < magnitudes.size else None
    for node, tensor, axis in targets:
        weights = numpy_helper.to_array(tensor)
        note = ""
        if pattern == "2:4":
            sparse = _two_of_four(weights, axis)
            if sparse is None:
                sparse = weights
                note = f"reduction axis of {weights.shape[axis]} is not a multiple of 4: kept dense"
        else:
            sparse = weights if threshold is None else np.where(np.abs(weights) < threshold, 0, weights)
        sparse = sparse.astype(weights.dtype)
        tensor.CopyFrom(numpy_helper.from_array(sparse, tensor.name))
        layers.append(SparseLayer(node.name, tensor.name, tuple(weights.shape),
                                  float(np.mean(sparse == 0)), note))
    onnx_model.save(model, output)
    return layers
