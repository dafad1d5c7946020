"""metarec: cold-start recommendation with large-model features, meta-learning and transfer."""

from metarec.types import Dataset, IdMap, Interactions, MetarecError, SideTable, Split, Task

__version__ = "0.1.0"

__all__ = [
    "Dataset",
    "IdMap",
    "Interactions",
    "MetarecError",
    "SideTable",
    "Split",
    "Task",
    "__version__",
]
