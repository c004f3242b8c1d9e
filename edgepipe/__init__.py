"""edgepipe: an edge-deployment compiler for neural networks.

The package imports nothing heavy at import time: torch, OpenVINO, TFLite and
TensorRT are loaded only by the stage or backend that needs them.
"""

__version__ = "0.1.0"
