"""metarec: cold-start recommendation with large-model features, meta-learning and transfer.

The public names below are re-exported lazily (PEP 562), so ``import metarec`` and the CLI's
light commands do not pay for importing torch until a model is actually used.
"""

from importlib import import_module

from metarec.errors import MetarecError

__version__ = "0.1.0"

_LAZY = {
    # the data types too: `import metarec` (and so the CLI's start) imports no numpy/pandas
    **dict.fromkeys(
        ("Dataset", "IdMap", "Interactions", "SideTable", "Split", "Task"), "metarec.types"
    ),
    "load_dataset": "metarec.data",
    "make_split": "metarec.splits",
    "build_features": "metarec.features",
    "MetaRecommender": "metarec.model",
    "ModelConfig": "metarec.model",
    "Predictor": "metarec.predictor",
}

# submodules reachable as attributes after a bare `import metarec`. `metarec.evaluate` is
# the module (its function is `metarec.evaluate.evaluate`): a lazy *function* of that name
# was replaced by the module as soon as anything imported metarec.evaluate, so the name
# meant one thing or the other depending on import order
_SUBMODULES = ("evaluate", "experiment", "metrics", "baselines", "transfer")

__all__ = ["MetarecError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return import_module(f"metarec.{name}")
    raise AttributeError(f"module 'metarec' has no attribute {name!r}")


def __dir__() -> list[str]:
    # the lazy names too: dir(metarec) listed none of them (tab completion, help())
    return sorted({*globals(), *_LAZY, *_SUBMODULES})
