"""Evaluation: distances between sample sets (energy distance, MMD)."""
from diffjax.eval.sample_distances import energy_distance, mmd_rbf

__all__ = ["energy_distance", "mmd_rbf"]
