"""The hooks a plugin implements. Each one hands the plugin a ``register`` callback.

A plugin module defines any of these functions, decorated with ``@harness.hookimpl``,
and calls ``register(name, factory, **info)`` once per component it provides::

    @hookimpl
    def register_heads(register):
        register("my_head", MyHead)

Factories and the interfaces they must satisfy are described in ``harness.types``.
"""
from pluggy import HookspecMarker

hookspec = HookspecMarker("retrieval_harness")  # = harness.registry.PROJECT


@hookspec
def register_encoders(register):
    """Register text encoders: ``register(name, factory)`` with ``factory(**options) -> Encoder``."""


@hookspec
def register_datasets(register):
    """Register retrieval datasets: ``register(name, factory)`` with ``factory(data_dir) -> Dataset``."""


@hookspec
def register_heads(register):
    """Register trainable heads: ``register(name, cls)`` with ``cls(dim, **options) -> Head``."""


@hookspec
def register_losses(register):
    """Register losses: ``register(name, factory)`` with ``factory(**options) -> Loss``."""


@hookspec
def register_checks(register):
    """Register gate checks: ``register(name, check)``, ``check`` satisfying ``harness.types.Check``."""


@hookspec
def register_commands(subparsers):
    """Add subcommands to the ``harness`` command line: ``p = subparsers.add_parser(name, help=...)``, its arguments,
    and ``p.set_defaults(func=handler)`` with ``handler(args) -> exit status``. The built-in ``train``, ``run``,
    ``baselines`` and ``validate`` are such plugins (``harness/train_cli.py``, ``harness/gate_cli.py``)."""
