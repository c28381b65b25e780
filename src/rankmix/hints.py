"""'Did you mean' hints for error messages about unknown names."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, known: Iterable[str], prefix: str = "") -> str:
    """'; did you mean 'x'?' for the known name closest to `name`, or '' when none is close."""
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""
