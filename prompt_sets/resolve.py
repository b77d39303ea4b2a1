"""Turn a `--prompt-set` value into a PromptSet: a registered name or a prompt file path, each
optionally with options, `name[:key=value,...]` (e.g. `i2p:category=sexual,hard=1,limit=50`)."""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

from bench.registry import PROMPT_SETS
from bench.spec import NamedOptions
from bench.prompt_sets.base import PromptSet, PromptSetError
from bench.prompt_sets.files import READERS, load_prompt_file


def _is_path(text: str) -> bool:
    return Path(text).is_file() or Path(text).suffix.lower() in READERS


def _check_options(name: str, valid: list[str] | None, options: dict[str, str]) -> None:
    unknown = sorted(set(options) - set(valid)) if valid is not None else []
    if unknown:
        raise PromptSetError(
            f"prompt set '{name}' has no option {', '.join(unknown)}; valid options: "
            f"{', '.join(valid or ['none'])}"
        )


def _option_names(loader: object) -> list[str] | None:
    """The loader's keyword options, or None when it takes **options (anything goes)."""
    params = inspect.signature(loader).parameters  # type: ignore[arg-type]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return list(params)


def load_prompt_set(spec: str) -> PromptSet:
    """Load a prompt set. Its name is the canonical spec (`i2p:category=sexual,hard=1`) when
    options are given, so differently filtered sets stay apart in the run's tables."""
    if not spec.strip():
        raise PromptSetError("--prompt-set '': give a registered name (`bench list prompt-sets`) "
                             "or a prompt file")
    if Path(spec).is_file():  # a path that itself contains ':' or ','
        return load_prompt_file(spec)
    parsed = NamedOptions.parse(spec, "prompt-set spec")
    options = parsed.param_dict()
    if _is_path(parsed.name):
        _check_options(parsed.name, ["limit"], options)
        prompt_set = load_prompt_file(parsed.name, **options)
        base = prompt_set.name
    else:
        loader = PROMPT_SETS.get(parsed.name)  # unknown names: UnknownNameError with close matches
        _check_options(parsed.name, _option_names(loader), options)
        prompt_set = loader(**options)
        base = parsed.name
    return dataclasses.replace(prompt_set, name=str(NamedOptions(base, parsed.params)))
