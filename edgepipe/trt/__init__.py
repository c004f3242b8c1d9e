"""TensorRT facts and files that need no TensorRT: version rules, pre-checks, the engine plan
and its `build_engine.sh`. The one module that imports `tensorrt` is `device/trt_engine.py`,
which ships inside the bundle so the device can build and run the engine without edgepipe."""
