"""Building registered heads and losses from a name and options, with errors that name the plugin."""
from __future__ import annotations

import inspect

from harness.registry import get
from harness.types import Head


class ComponentError(ValueError):
    """A head or loss cannot be built as configured; the message names the plugin and what to change."""


def options_of(factory) -> list[str] | None:
    """The options a factory takes: its keyword parameters plus any it declares in an ``options`` attribute (a
    head taking ``**options`` lists them there); None when it takes ``**options`` and declares none (any is passed
    on). A head that keeps ``Head.__init__`` takes none."""
    if isinstance(factory, type) and issubclass(factory, Head) and factory.__init__ is Head.__init__:
        return list(_declared(factory) or ())
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params.values()) and not _declared(factory):
        return None
    names = [n for n, p in params.items() if n not in ("self", "dim") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return list(dict.fromkeys([*names, *(_declared(factory) or ())]))  # in the order the head declares them


def _declared(factory) -> tuple[str, ...] | None:
    options = getattr(factory, "options", None)
    return tuple(options) if isinstance(options, (list, tuple, dict)) else None


def _check_options(kind: str, name: str, component, options: dict, extra: str = "") -> None:
    valid = options_of(component.factory)
    unknown = [k for k in options if valid is not None and k not in valid]
    if unknown:
        raise ComponentError(f"{kind} {name!r} (plugin {component.plugin}) has no option {', '.join(map(repr, unknown))}; "
                             f"its options are: {', '.join(valid or []) or 'none'}{extra}")


def build_head(name: str, dim: int, options: dict | None = None) -> Head:
    """A registered head with ``options``; a wrong option or a failing constructor raises ``ComponentError``."""

    component = get("heads", name)
    options = dict(options or {})
    _check_options("head", name, component, options)
    try:
        head = component.factory(dim, **options)
    except Exception as exc:  # a plugin's constructor: report it as that plugin's error
        given = f" with options {options}" if options else ""
        raise ComponentError(f"head {name!r} (plugin {component.plugin}) failed to build at dim {dim}{given}: "
                             f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(head, Head):
        raise ComponentError(f"head {name!r} (plugin {component.plugin}) is a {type(head).__name__}, not a harness.types.Head subclass")
    if head.similarity not in ("cos", "dot"):
        raise ComponentError(f"head {name!r} (plugin {component.plugin}) declares similarity {head.similarity!r}; use 'cos' or 'dot'")
    return head


def build_loss(name: str, options: dict | None = None):
    """``factory(**options)`` of a registered loss (``weight`` is the trainer's, not the loss's)."""

    component = get("losses", name)
    options = {k: v for k, v in (options or {}).items() if k != "weight"}
    _check_options("loss", name, component, options, extra=" (plus 'weight')")
    try:
        return component.factory(**options)
    except Exception as exc:
        given = f" with options {options}" if options else ""
        raise ComponentError(f"loss {name!r} (plugin {component.plugin}) failed to build{given}: {type(exc).__name__}: {exc}") from exc


def check_components(head: str, head_options: dict, losses: dict) -> None:
    """A head's name and options and each loss (built once), before any data is read: a wrong name raises
    ``PluginError``, a wrong option or a failing loss ``ComponentError``. The head is built at its real width
    when training starts."""

    _check_options("head", head, get("heads", head), dict(head_options or {}))
    for name, spec in losses.items():
        build_loss(name, spec if isinstance(spec, dict) else {})


def is_trainable(head: Head) -> bool:
    return bool(getattr(head, "trainable", True)) and any(p.requires_grad for p in head.parameters())
