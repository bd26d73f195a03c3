"""Training and sample data: simulation of multi-coil k-space, task family."""
