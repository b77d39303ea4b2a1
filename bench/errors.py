"""The exceptions that mean 'the user asked for something that cannot be done' (one line, exit 2),
as opposed to bugs (traceback)."""
from bench.models import ModelError
from bench.registry import RegistryTypeError, UnknownNameError
from bench.sampler import NonFiniteError
from bench.spec import SpecError
from bench.prompt_sets.base import PromptSetError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ModelError, UnknownNameError, RegistryTypeError, SpecError, PromptSetError, FileNotFoundError, NonFiniteError)
