"""Parse prompt-set options, which arrive as strings from `name:key=value,...` specs."""
from __future__ import annotations

from bench.prompt_sets.base import PromptSetError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def bool_option(where: str, key: str, value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise PromptSetError(f"{where}: option {key}={value!r} is not a boolean; write {key}=1 or "
                         f"{key}=0")


def limit_option(where: str, value: str | int | None) -> int | None:
    """A positive integer, or None (no limit)."""
    if value is None or str(value).strip() == "":
        return None
    try:
        limit = int(str(value).strip())
    except ValueError:
        limit = 0
    if limit < 1:
        raise PromptSetError(f"{where}: option limit={value!r} is not a positive integer; write "
                             "limit=N")
    return limit
