"""Write the bad-input corpus next to this file (deterministic; rerun after changing a case).

    python tests/corpus/make_corpus.py

Each file is one malformed input; cases.toml says how edgepipe is called with it,
the exit code it must give and a fragment of its one-line message.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent


def small_model(name: str = "input") -> onnx.ModelProto:
    """Conv(1->4, 3x3) + Relu + GlobalAveragePool on 1x1x8x8: small, valid, fixed weights."""
    weight = numpy_helper.from_array(np.linspace(-1, 1, 36, dtype=np.float32).reshape(4, 1, 3, 3), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", [name, "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("GlobalAveragePool", ["r"], ["y"], name="pool")],
        "small", [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="corpus")
    model.ir_version = 8
    return model


def write(name: str, data: bytes | str) -> None:
    path = HERE / "files" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def main() -> None:
    good = small_model().SerializeToString()
    write("good.onnx", good)
    write("truncated.onnx", good[: len(good) // 2])
    flipped = bytearray(good)
    for index in range(20, len(flipped), 7):
        flipped[index] ^= 0xA5
    write("bit-flipped.onnx", bytes(flipped))
    write("empty.onnx", b"")
    write("text.onnx", "this is not a model\n")

    huge = small_model()
    huge.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 2**40
    write("huge-dims.onnx", huge.SerializeToString())

    negative = small_model()
    negative.graph.input[0].type.tensor_type.shape.dim[3].dim_value = -8
    write("negative-dims.onnx", negative.SerializeToString())

    cyclic = small_model()
    cyclic.graph.node[0].input[0] = "y"  # conv reads the pool's output: a cycle
    write("cyclic.onnx", cyclic.SerializeToString())

    missing_init = small_model()
    del missing_init.graph.initializer[:]
    write("missing-initializer.onnx", missing_init.SerializeToString())

    dangling = small_model()
    dangling.graph.node[1].input[0] = "nowhere"
    write("dangling-input.onnx", dangling.SerializeToString())

    no_outputs = small_model()
    del no_outputs.graph.output[:]
    write("no-outputs.onnx", no_outputs.SerializeToString())

    duplicate = small_model()
    duplicate.graph.node[1].output[0] = "c"  # two nodes write tensor "c"
    duplicate.graph.node[2].input[0] = "c"
    write("duplicate-output.onnx", duplicate.SerializeToString())

    domain = small_model()
    domain.graph.node[1].domain = "com.nowhere"
    domain.opset_import.append(helper.make_opsetid("com.nowhere", 1))
    write("unknown-domain.onnx", domain.SerializeToString())

    future = small_model()
    future.opset_import[0].version = 99
    write("future-opset.onnx", future.SerializeToString())

    unknown_op = small_model()
    unknown_op.graph.node[1].op_type = "Frobnicate"
    write("unknown-op.onnx", unknown_op.SerializeToString())

    non_utf8 = small_model().SerializeToString().replace(b"relu", b"r\xffl\xfe")
    write("non-utf8-name.onnx", non_utf8)

    outside = small_model()
    tensor = outside.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "144")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    write("external-outside/model.onnx", outside.SerializeToString())
    def pointing_to(location: str) -> bytes:
        model = onnx.ModelProto()
        model.CopyFrom(outside)
        next(e for e in model.graph.initializer[0].external_data if e.key == "location").value = location
        return model.SerializeToString()

    write("external-absolute/model.onnx", pointing_to("/etc/hostname"))
    write("external-link/model.onnx", pointing_to("weights.bin"))
    link = HERE / "files" / "external-link" / "weights.bin"
    if not link.is_symlink():
        link.symlink_to("../good.onnx")
    write("external-missing/model.onnx", pointing_to("absent.bin"))

    # torch-side files
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("archive/version", "1")
        archive.writestr("archive/data/0", bytes(256 * 2**20))  # 256 MiB of zeros, ~250 KiB packed
    write("zip-bomb.pt2", bomb.getvalue())
    write("not-a-zip.pt2", b"PK\x03\x04 not really a zip archive")

    class Payload:
        def __reduce__(self):
            return (print, ("pickle ran code",))
    write("pickled.pt", pickle.dumps(Payload()))
    write("factory-syntax-error.py", "def model(:\n")
    write("factory-returns-int.py", "def model():\n    return 42\n")

    # configuration
    write("target-wrong-type.toml", 'name = "t"\ndescription = "d"\nbackend = "onnxruntime"\n'
                                    'aliases = "cpu"\n')
    write("target-unknown-key.toml", 'name = "t"\ndescription = "d"\nbackend = "onnxruntime"\nspeed = 11\n')
    write("target-unknown-backend.toml", 'name = "t"\ndescription = "d"\nbackend = "abacus"\n')
    write("target-bad-threads.toml", 'name = "t"\ndescription = "d"\nbackend = "onnxruntime"\n'
                                     '[runtime]\nthreads = -4\n')
    write("target-invalid.toml", 'name = "t\ndescription = "d"\n')
    write("profile-recursive.toml", 'name = "p"\ndescription = "d"\nextends = "profile-recursive.toml"\n')
    write("profile-unknown-stage.toml", 'name = "p"\ndescription = "d"\nstages = ["export", "sharpen", '
                                        '"lower"]\n')
    write("profile-wrong-type.toml", 'name = "p"\ndescription = "d"\n[accuracy]\natol = "tight"\n')
    write("profile-unknown-key.toml", 'name = "p"\ndescription = "d"\n[quantize]\nbits = 4\n')
    write("profile-stage-not-table.toml", 'name = "p"\ndescription = "d"\nfuse = 3\n')
    write("profile-binary.toml", bytes(range(256)))

    # calibration data for the 1x1x8x8 input
    def npz(name: str, **arrays: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write(name, buffer.getvalue())

    npz("calib-wrong-shape.npz", input=np.zeros((4, 3, 8, 8), np.float32))
    npz("calib-wrong-dtype.npz", input=np.zeros((4, 1, 8, 8), np.float64))
    npz("calib-nan.npz", input=np.full((4, 1, 8, 8), np.nan, np.float32))
    npz("calib-inf.npz", input=np.full((4, 1, 8, 8), np.inf, np.float32))
    npz("calib-empty.npz", input=np.zeros((0, 1, 8, 8), np.float32))
    npz("calib-wrong-name.npz", image=np.zeros((4, 1, 8, 8), np.float32))
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    write("calib-object.npy", buffer.getvalue())
    npz("eval-bad-labels.npz", input=np.zeros((4, 1, 8, 8), np.float32), labels=np.zeros(3, np.int64))
    round_two()
    print(f"wrote {sum(1 for p in (HERE / 'files').rglob('*') if p.is_file())} files under {HERE / 'files'}")


def _model(nodes, inputs, outputs, initializers=(), opset: int = 17) -> bytes:
    graph = helper.make_graph(nodes, "m", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="corpus")
    model.ir_version = 8
    return model.SerializeToString()


def round_two() -> None:
    """Hostile inputs, round two: typed inputs edgepipe cannot feed, sizes no runtime can allocate,
    names ONNX Runtime refuses, sample files that are not what their name says."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    sequence = helper.make_value_info("x", helper.make_sequence_type_proto(
        helper.make_tensor_type_proto(TensorProto.FLOAT, [1, 4])))
    write("input-sequence.onnx", _model([helper.make_node("SequenceAt", ["x", "i"], ["y"])], [sequence], [y],
                                        [numpy_helper.from_array(np.array(0, np.int64), "i")]))
    optional = helper.make_value_info("x", helper.make_optional_type_proto(
        helper.make_tensor_type_proto(TensorProto.FLOAT, [1, 4])))
    write("input-optional.onnx", _model([helper.make_node("OptionalGetElement", ["x"], ["y"])],
                                        [optional], [y]))
    undefined = helper.make_tensor_value_info("x", TensorProto.UNDEFINED, [1, 4])
    write("input-undefined-type.onnx", _model([helper.make_node("Relu", ["x"], ["y"])], [undefined], [y]))
    zero = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 0])
    write("input-zero-sized.onnx", _model([helper.make_node("Relu", ["x"], ["y"])], [zero],
                                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 0])]))
    pads = numpy_helper.from_array(np.array([0, 0, 0, 2**40], np.int64), "pads")
    def unknown(rank: int) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{i}" for i in range(rank)])

    write("pad-2-to-the-40.onnx", _model([helper.make_node("Pad", ["x", "pads"], ["y"], name="huge_pad")],
                                         [x], [unknown(2)], [pads]))
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])
    scales = numpy_helper.from_array(np.array([1, 1, 1e6, 1e6], np.float32), "scales")
    write("resize-by-a-million.onnx", _model(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], name="huge_resize")], [image],
        [unknown(4)], [scales]))
    shape = numpy_helper.from_array(np.array([10**7, 10**7, 4], np.int64), "shape")
    write("expand-to-1e14.onnx", _model([helper.make_node("Expand", ["x", "shape"], ["y"],
                                                          name="huge_expand")], [x], [unknown(3)], [shape]))
    write("duplicate-node-names.onnx", _model([helper.make_node("Relu", ["x"], ["a"], name="same"),
                                               helper.make_node("Neg", ["a"], ["y"], name="same")], [x], [y]))
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((4, 1, 8, 8), np.float32))
    write("calib-npy-bytes.npz", buffer.getvalue())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("input.npy", b"this member is not an array")
    write("calib-junk-member.npz", buffer.getvalue())
    write("profile-extends-missing.toml", 'name = "p"\ndescription = "d"\nextends = "no-such-profile"\n')
    write("profile-atol-inf.toml", 'name = "p"\ndescription = "d"\n[accuracy]\natol = inf\n')
    write("profile-cycle-a.toml", 'name = "p"\ndescription = "d"\nextends = "profile-cycle-b.toml"\n')
    write("profile-cycle-b.toml", 'name = "p"\ndescription = "d"\nextends = "profile-cycle-a.toml"\n')


if __name__ == "__main__":
    main()
