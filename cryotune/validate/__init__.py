"""Downstream validation: 3D reconstruction with FSC, and conformation clustering."""
