"""Progress over calibration pairs on stderr: the package's one progress helper.

Used by the CLI (``lukv-table``, ``profile``) and by :func:`budgetopt.torch.profile_model`.
tqdm draws the bar where it is installed; without it, a one-line counter. Standard library
only at module level (the console script imports it before it can report a Ctrl-C).
"""

from __future__ import annotations

import sys

__all__ = ["Progress"]


class Progress:
    """Progress over ``total`` pairs on stderr, off unless ``enabled``.

    Parameters
    ----------
    total : int
        Pairs in all.
    enabled : bool
        Whether to show anything.
    desc : str
        The label in front of the count.
    initial : int, optional
        Pairs already done (a resumed run).
    terminal_only : bool, optional
        Show nothing when stderr is not a terminal (the CLI's rule); ``False`` leaves that to
        tqdm (the library's rule).
    counter : bool, optional
        Without tqdm, write a ``desc: done/total pairs`` counter; ``False`` shows nothing then.

    Notes
    -----
    ``progress(done, total)`` sets the count (the callback :func:`budgetopt.lukv_table`
    calls); :meth:`advance` adds to it with an optional rate shown next to the bar.
    """

    def __init__(self, total, enabled, desc, *, initial=0, terminal_only=True, counter=True):
        self.bar = None
        self.enabled = bool(enabled) and (not terminal_only or sys.stderr.isatty())
        self.desc = desc
        self.total = total
        self.done = initial
        if self.enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                options = dict(leave=False) if terminal_only else dict(dynamic_ncols=True)
                self.bar = tqdm(total=total, initial=initial, desc=desc, unit="pair", file=sys.stderr, **options)
            elif not counter:
                self.enabled = False

    def __call__(self, done, total):
        if not self.enabled:
            return
        self.done = done
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        else:
            sys.stderr.write(f"\r{self.desc}: {done}/{total} pairs")
            sys.stderr.flush()

    def advance(self, n, *, postfix=None):
        """Add ``n`` finished pairs; ``postfix`` (e.g. a rate) is shown next to a tqdm bar."""
        if self.enabled and self.bar is not None:
            if postfix is not None:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(n)
        elif self.enabled:
            self(self.done + n, self.total)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\n")
