"""The bundle's launcher, run.py, copied verbatim into every bundle beside edgepipe_runtime/."""
