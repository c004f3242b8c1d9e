"""Post-training int8: calibration ranges, QDQ writing, sensitivity, caches for other runtimes."""
