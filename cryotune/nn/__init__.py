"""Denoisers: scoring rules, models, metrics and Algorithm 1 (no Ray in this package)."""
