"""Masks: selection, layer densities, scores, rules and the mask-owning combinator."""

__all__: list[str] = []
