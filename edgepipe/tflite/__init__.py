"""TFLite/LiteRT: converting to `.tflite` (litert-torch or onnx2tf) and the I/O conventions
both routes share. Running a `.tflite` lives in `device/run.py` (shipped in the bundle)
and `backends/tflite.py` (the host's runner)."""
