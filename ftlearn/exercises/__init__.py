"""The exercises' checks: `check("01.2", answer, ...)` passes for a right answer and says why not.

Each notebook 01-07 ends with exercises. A learner writes an answer in place of `...` and runs the
check cell below it; the check recomputes what it needs from the objects it is given (a model, a
tokenizer, the notebook's own results) and raises `NotAttempted` while the answer is still `...`,
or an `AssertionError` with a hint when it is wrong. Solutions: notebooks/solutions/.
Each notebook's checks live in a module of their own here (`nb01`, `nb03`, ...).
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable
from typing import Any

CHECKS: dict[str, Callable[..., str]] = {}  # "01.1" -> the function that checks its answer


class NotAttempted(AssertionError):
    """The answer is still the placeholder `...`."""


def exercise(key: str) -> Callable:
    """Register a check under `key` ("NN.k": notebook, exercise)."""

    def register(fn: Callable[..., str]) -> Callable[..., str]:
        CHECKS[key] = fn
        return fn

    return register


def check(key: str, answer: Any, **context) -> None:
    """Check the answer to exercise `key`; print what was right, or raise with a hint."""
    if key not in CHECKS:
        raise KeyError(f"No exercise {key!r}; there are {', '.join(sorted(CHECKS))}")
    if answer is ... or answer is None:
        raise NotAttempted(
            f"Exercise {key}: replace the `...` with your answer, then run this again."
        )
    print(f"Exercise {key}: correct. {CHECKS[key](answer, **context)}")


def close(a: float, b: float, rel: float) -> bool:
    """a within a relative `rel` of b (and finite)."""
    return math.isfinite(a) and abs(a - b) <= rel * abs(b)


# Every module of this package (nb01.py, nb03.py, ...) registers its notebook's checks.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
