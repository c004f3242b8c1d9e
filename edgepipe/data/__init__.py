"""Data a build reads: calibration, evaluation and training samples (arrays, images with their
declared preprocessing, user callables, seeded random data). Below the stages: stages,
scoring and pruning import from here, never the other way round."""
