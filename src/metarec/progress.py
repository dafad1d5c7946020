"""Progress bars for long work (training, embedding, synthetic logs), drawn on stderr.

One rule for every bar: into a terminal it redraws every 0.1 s; into a log file (stderr
not a terminal) every 10 s, because each redraw there is another line of text — at 0.1 s a
quickstart's log grew by ~100 KB and buried its summary lines.
"""

from __future__ import annotations

import sys
from typing import Any


def bar(iterable: Any = None, **kwargs: Any):
    """A ``tqdm.auto`` bar with the redraw interval above; ``kwargs`` go to tqdm."""
    from tqdm.auto import tqdm

    kwargs.setdefault("mininterval", 0.1 if sys.stderr.isatty() else 10.0)
    return tqdm(iterable, **kwargs)
