"""Reconstruction: classical methods and the unrolled network."""
