"""Which timm model names visionattn registers, so tests and tools can iterate over them."""

from __future__ import annotations

_MODELS: dict[str, str] = {}  # name -> family
_ALIASES: dict[str, str] = {}  # alias -> official name


def add(name: str, family: str) -> None:
    _MODELS[name] = family


def add_alias(alias: str, target: str) -> None:
    _ALIASES[alias] = target


def list_models(family: str | None = None, aliases: bool = False) -> list[str]:
    """Registered visionattn model names (optionally of one family; aliases included on request)."""
    names = [n for n, f in _MODELS.items() if family is None or f == family]
    if aliases:
        names += [a for a, t in _ALIASES.items() if t in names]
    return sorted(names)


def family_of(name: str) -> str:
    return _MODELS[_ALIASES.get(name, name)]


def resolve_alias(name: str) -> str:
    return _ALIASES.get(name, name)
