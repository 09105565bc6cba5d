"""Built-in plugins. Each module implements hooks from ``harness.hookspecs``, like any external plugin."""
