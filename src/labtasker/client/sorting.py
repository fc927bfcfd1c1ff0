"""The sort grammar of the client: ``field``, ``field:asc`` or ``field:desc``.

Used by ``-S/--sort`` of the CLI and by the ``sort`` argument of the Python API. The order is
case-insensitive and defaults to ``asc`` (also for ``field:``); spaces around either part are
ignored. The wire form is ``[(field, 1 | -1), ...]`` (1 ascending).
"""

from __future__ import annotations

from collections.abc import Iterable

SORT_ORDERS = {"asc": 1, "desc": -1}


def parse_sort_item(text: str) -> tuple[str, int]:
    """``"field:desc"`` -> ``("field", -1)``. Raises ``ValueError`` (the message quotes the
    text and names the grammar) for an empty field or an unknown order."""
    field, _, order = text.partition(":")
    order = order.strip().lower() or "asc"
    if not field.strip() or order not in SORT_ORDERS:
        raise ValueError(f"{text!r} (expected field:asc or field:desc)")
    return field.strip(), SORT_ORDERS[order]


def parse_sort_spec(values: Iterable[str] | None) -> list[tuple[str, int]] | None:
    """Every item through :func:`parse_sort_item`; ``None`` for no (or an empty) sort."""
    if not values:
        return None
    return [parse_sort_item(value) for value in values]
