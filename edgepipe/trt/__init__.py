"""TensorRT facts and files that need no TensorRT: version rules, pre-checks, the engine plan
and its `build_engine.sh`. The one module that imports `tensorrt` is the device runtime's
`runtime/runners/tensorrt.py`, which ships inside every bundle so the device can build and
run the engine without edgepipe."""
