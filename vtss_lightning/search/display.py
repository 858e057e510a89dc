"""What the user sees while a search runs: a live bar over the fits and one line per event.

Searches take minutes, so every finished fit moves a bar (tqdm, with elapsed and
estimated time, as Lightning's own bar) and every finished candidate, split and
fitted generator prints a line as it happens. The bar follows the outer trainer's
``enable_progress_bar``; ``verbose=False`` shows nothing.
"""

from __future__ import annotations

import sys
from typing import Any


class SearchDisplay:
    """Progress of one search.

    Parameters
    ----------
    total
        Fits the search will run (splits x candidates still to do).
    verbose
        Print lines (and the bar, when ``bar``); ``False`` shows nothing.
    bar
        Draw a live bar; lines are then written above it.
    """

    def __init__(self, total: int, verbose: bool = True, bar: bool = False) -> None:
        self.verbose = verbose
        self._bar: Any = None
        if verbose and bar and total > 0:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="VTSS search", unit="fit", dynamic_ncols=True)

    def line(self, text: str) -> None:
        """One line of progress, above the bar when there is one."""
        if not self.verbose:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            print(text, file=sys.stdout, flush=True)

    def fit_done(self, loss: float, where: str = "") -> None:
        """One (split, candidate) fit finished."""
        if self._bar is not None:
            self._bar.set_postfix_str(f"{where} loss {loss:.4f}".strip(), refresh=False)
            self._bar.update(1)

    def generator_fitted(self, who: str, seconds: float) -> None:
        self.line(f"VTSS: fitted the generator for {who} ({seconds:.1f} s)")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
