"""Example models in plain torch (torchvision is not a dependency); each file has factories
usable as `edgepipe build examples/models/FILE.py:FACTORY`."""
