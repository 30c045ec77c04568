"""Pallas kernels with pure-jnp twins and backend dispatch. Imports nothing of the library."""

__all__: list[str] = []
