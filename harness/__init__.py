"""A regression-test harness that gates retrieval embedding architectures."""
from pluggy import HookimplMarker

__version__ = "0.1.0"

hookimpl = HookimplMarker("retrieval_harness")  # = harness.registry.PROJECT

__all__ = ["hookimpl", "__version__"]
