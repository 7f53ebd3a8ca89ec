"""Where the self-service pages ask for a recent second factor before a credential is made.

STEP-UP: the second factor and step-up re-authentication are built beside these
pages (on their own branch); this module is where they meet. Until then
:func:`requires_recent_second_factor` lets every request through. At the merge,
import the real decorator here (and delete the fallback), so that every view
decorated with it, the token views as the app-password views, asks for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

V = TypeVar("V", bound=Callable[..., Any])

try:  # STEP-UP: the second-factor module, once merged, provides the real decorator.
    from kumosubmit.web.second_factor import (  # type: ignore[import-not-found]
        requires_recent_second_factor as _real,
    )
except ImportError:  # not there yet: no step-up
    _real = None


def requires_recent_second_factor(view: V) -> V:
    """Ask for a recent second factor before ``view`` (a no-op until step-up is merged)."""
    if _real is not None:
        return _real(view)  # type: ignore[no-any-return]
    return view
