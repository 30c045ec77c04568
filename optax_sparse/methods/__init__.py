"""Paper methods built from the geometry and mask layers."""

__all__: list[str] = []
