"""Why a loop found nothing to run while tasks are pending.

``explain_no_match`` is asked when a fetch comes back empty. It counts the pending tasks by
their set of argument fields (one ``task count --by arg_fields`` query) and says which field
sets they have and which field of the command is closest to one of theirs -- a typo in a
placeholder (``%(sed)`` for ``seed``) then shows at once instead of "all done" -- or that an
``--extra-filter`` excludes the tasks that do have the command's fields.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from labtasker.keys import shape_matches, unflatten

MAX_SHAPES_SHOWN = 3
# A hint is shown from difflib's ratio 0.5; the loop only exits 1 (``likely_typo``) from 0.7
# (``sed``/``seed`` 0.86, ``guidance``/``guidance_scale`` 0.73; distinct names such as
# ``input``/``output`` 0.55, ``run_id``/``run_name`` 0.57, ``dim``/``dir`` 0.67 stay below).
HINT_CUTOFF = 0.5
TYPO_CUTOFF = 0.7


@dataclass(frozen=True)
class NoMatch:
    """Why pending tasks do not match: ``text`` (one sentence for the log) and
    ``likely_typo`` (a placeholder of the command is close to a field of the pending tasks:
    ``%(sed)`` for ``seed``, so the loop will never run them as it stands)."""

    text: str
    likely_typo: bool = False


def _fields_text(fields: Sequence[str]) -> str:
    return "{" + ", ".join(fields) + "}"


def _shape(fields: Sequence[str]) -> dict[str, Any]:
    try:
        return unflatten({f: None for f in fields})
    except ValueError:
        return {}


def explain_no_match(
    required_fields: Sequence[str] | None, extra_filter: Any = None, client: Any = None
) -> NoMatch | None:
    """An explanation when pending tasks exist that this loop cannot take, else ``None`` (no
    pending task at all, or some match and were just taken by others).

    ``required_fields``: the loop's fields (``None``/``[]``: any shape); ``extra_filter``:
    the loop's filter (any form :func:`labtasker.client.api.count_tasks` takes).
    """
    from labtasker.client import api

    shapes = api.count_tasks(status="pending", by="arg_fields", client=client)
    if not shapes.total:
        return None
    required = sorted(f for f in (required_fields or []) if f != "*")
    matching = [g for g in shapes.groups if shape_matches(required_fields, _shape(g.value or []))]
    n_matching = sum(g.count for g in matching)
    if n_matching:
        if extra_filter is None:
            return None  # they match; another worker took them or they just arrived
        if api.count_tasks(status="pending", extra_filter=extra_filter, client=client).total:
            return None
        return NoMatch(
            f"{n_matching} pending task(s) have the fields {_fields_text(required)} but "
            "none matches --extra-filter."
        )
    shown = sorted(shapes.groups, key=lambda g: -g.count)[:MAX_SHAPES_SHOWN]
    have = "; ".join(f"{g.count} pending task(s) have {_fields_text(g.value or [])}" for g in shown)
    if len(shapes.groups) > MAX_SHAPES_SHOWN:
        have += f"; {len(shapes.groups) - MAX_SHAPES_SHOWN} other field set(s)"
    text = (
        f"No pending task has exactly the fields {_fields_text(required)} of the "
        f'command ("no more, no less"): {have}.'
    )
    theirs = sorted({f for g in shapes.groups for f in (g.value or [])})
    hints = []
    corrected = {}  # placeholder -> the pending tasks' field it is close to (TYPO_CUTOFF)
    for field in required:
        if field in theirs:
            continue
        close = difflib.get_close_matches(field, theirs, n=1, cutoff=HINT_CUTOFF)
        if close:
            hints.append(f"%({close[0]}) for %({field})")
            if difflib.SequenceMatcher(None, field, close[0]).ratio() >= TYPO_CUTOFF:
                corrected[field] = close[0]
    if hints:
        text += f" Did you mean {', '.join(hints)}?"
        typo = len(corrected) == len(hints) and _is_likely_typo(
            required_fields, corrected, shapes.groups, client
        )
        return NoMatch(text, likely_typo=typo)
    extra = sorted(set(theirs) - set(required))
    if extra:
        text += (
            f" To run tasks with fields the command does not use, name them in the "
            f"command (e.g. as a shell comment: # %({extra[0]}))."
        )
    return NoMatch(text)


def _is_likely_typo(
    required_fields: Sequence[str] | None,
    corrected: dict[str, str],
    pending_groups: Sequence[Any],
    client: Any,
) -> bool:
    """Whether the command's placeholders are a typo, not another script's legitimate fields
    (a queue shared by several commands): the corrected fields (each placeholder in
    ``corrected`` replaced by its close pending field) are exactly the fields of some pending
    tasks, AND no task of the queue in any status has the command's fields as written (a
    field set that tasks have had -- run by this loop's other slots, by earlier loops, or
    done -- is valid: the loop just found nothing left to do). One more count query."""
    from labtasker.client import api

    fixed = [corrected.get(f, f) for f in (required_fields or [])]
    if not any(shape_matches(fixed, _shape(g.value or [])) for g in pending_groups):
        return False
    every = api.count_tasks(by="arg_fields", client=client)
    if every.truncated:
        return False  # some field sets are not listed: cannot tell
    return not any(shape_matches(required_fields, _shape(g.value or [])) for g in every.groups)
