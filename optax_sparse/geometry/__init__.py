"""Optimizer geometries: hyperbolic steps, mirror descent, steepest descent, weight decay."""

__all__: list[str] = []
