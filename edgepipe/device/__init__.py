"""Files copied verbatim into every bundle; they must not import edgepipe."""
