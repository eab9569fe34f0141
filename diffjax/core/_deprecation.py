"""Renamed parameters: the old keyword keeps working, with a ``DeprecationWarning``, for one release.

Usage (``sde`` became ``process``; positional calls are unaffected)::

    @renamed_keywords(sde="process")
    def dsm_loss(key, x0, score_fn, process, *, ...): ...
"""
from __future__ import annotations

import functools
import inspect
import warnings

__all__ = ["renamed_keywords"]


def renamed_keywords(**renames: str):
    """Decorator: accept each old keyword ``old=`` of ``renames`` (``old="new"``) as the parameter ``new``, with a
    ``DeprecationWarning``; passing both raises ``TypeError``. The decorated function keeps its signature."""

    def decorate(fn):
        params = inspect.signature(fn).parameters
        unknown = [new for new in renames.values() if new not in params]
        if unknown:
            raise ValueError(f"renamed_keywords: {fn.__qualname__} has no parameter {unknown}")

        position = {new: list(params).index(new) for new in renames.values()}

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs or len(args) > position[new]:
                        raise TypeError(f"{fn.__qualname__}() got both {old}= and {new}= (or {new} by position); "
                                        f"pass {new} only")
                    warnings.warn(f"{fn.__qualname__}(): the keyword {old}= is deprecated and will be removed in the "
                                  f"next release; pass {new}= (or the argument by position)", DeprecationWarning,
                                  stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper

    return decorate
