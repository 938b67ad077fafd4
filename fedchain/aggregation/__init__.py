"""Aggregation: weights, numeric kernels and the robust rules."""
