"""Latency profiling of bundles (schema "edgepipe.profile/1")."""
