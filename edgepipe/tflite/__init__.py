"""TFLite/LiteRT: converting to `.tflite` (litert-torch or onnx2tf) and the I/O conventions
both routes share. Running a `.tflite` lives in the device runtime
(`runtime/runners/tflite.py`, shipped in the bundle and used by the host alike)."""
