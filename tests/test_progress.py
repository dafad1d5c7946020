"""The one redraw rule of every progress bar (metarec.progress)."""

import io

import metarec.progress as P


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self):
        return self._tty


def test_bars_redraw_rarely_into_a_log_and_often_into_a_terminal(monkeypatch):
    monkeypatch.setattr(P.sys, "stderr", _Stream(tty=False))
    b = P.bar(range(3), file=io.StringIO())
    assert b.mininterval == 10.0
    monkeypatch.setattr(P.sys, "stderr", _Stream(tty=True))
    b = P.bar(range(3), file=io.StringIO())
    assert b.mininterval == 0.1
    # a caller's own interval wins, and the iterable is passed through
    assert P.bar(range(3), file=io.StringIO(), mininterval=2.0).mininterval == 2.0
    assert list(P.bar(range(3), disable=True)) == [0, 1, 2]
