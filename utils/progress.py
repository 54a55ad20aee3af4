"""Progress bars on a terminal only."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def progress(iterable: Iterable | None = None, **options: Any) -> tqdm:
    """tqdm(iterable, **options), drawn only when its output (stderr unless `file` is given) is a terminal.

    Into a log file or a pipe (a batch job, `> run.log 2>&1`) every redraw of a bar would add a line,
    burying the results; there the bar is off. tqdm.write lines, such as each epoch's loss, are
    printed either way.
    """
    return tqdm(iterable, disable=None, **options)  # None: tqdm's own "off unless a terminal"
