"""BEIR datasets by name; any other BEIR-format folder can be given by path."""
from functools import partial

from harness import hookimpl
from harness.data import BEIR_NAMES, BeirDataset


@hookimpl
def register_datasets(register):
    for name in BEIR_NAMES:
        register(name, partial(BeirDataset.find, name), description=f"BEIR {name} (local folder or beir download)")
