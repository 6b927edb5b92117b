"""Pruning methods. Importing this package registers every built-in method."""

from hyperprune.methods import (  # noqa: F401  (registration)
    admm,
    dense,
    hyperprune,
    magnitude,
    maskllm,
    maskpro,
    proxsparse,
    pruner_zero,
    ria,
    sparsegpt,
    wanda,
)
from hyperprune.methods.base import (
    METHODS,
    BlockContext,
    MethodEntry,
    PruningMethod,
    WholeModelPass,
    get_method,
    register_method,
    register_preset,
)

__all__ = ["METHODS", "BlockContext", "MethodEntry", "PruningMethod", "WholeModelPass", "get_method", "register_method", "register_preset"]


def load_method_plugins() -> list[str]:
    """Import the modules other packages declare under the entry-point group ``hyperprune.methods``
    (``[project.entry-points."hyperprune.methods"] toy = "mypkg.toy"``): their ``@register_method``
    makes the method available to the CLI and the API like a built-in one. Returns their names."""
    import logging
    from importlib.metadata import entry_points

    loaded = []
    for entry in entry_points(group="hyperprune.methods"):
        try:
            entry.load()
        except Exception as exc:  # a broken plugin must not take the built-in methods down with it
            logging.getLogger(__name__).warning("method plugin %s (%s) failed to load: %s", entry.name, entry.value, exc)
            continue
        loaded.append(entry.name)
    return loaded


load_method_plugins()
