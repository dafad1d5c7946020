"""Meta-learning: one batched inner loop, seven algorithms as settings of it.

``ALGORITHMS`` is the explicit registry (name -> :class:`Algorithm`); build a
:class:`MetaLearner` from a ScorerConfig and a :class:`MetaConfig` to get pure
``init_params`` / ``adapt`` / ``meta_grads`` / ``predict`` functions.
"""

from metarec.meta.algorithms import ALGORITHMS, Algorithm, MetaConfig, MetaLearner
from metarec.meta.episodes import (
    Episode,
    EpisodeBatch,
    TaskInputs,
    build_inputs,
    episode_from_task,
    make_episode,
    pad_episodes,
)
from metarec.meta.inner import inner_loop, loop_meta_grads

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "Episode",
    "EpisodeBatch",
    "MetaConfig",
    "MetaLearner",
    "TaskInputs",
    "build_inputs",
    "episode_from_task",
    "inner_loop",
    "loop_meta_grads",
    "make_episode",
    "pad_episodes",
]
