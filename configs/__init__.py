"""Experiment configs (ml_collections): default.py and overrides of it."""
