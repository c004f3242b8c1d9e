"""Pruning: structured channel removal (torch-pruning), distillation, unstructured and 2:4 sparsity."""
