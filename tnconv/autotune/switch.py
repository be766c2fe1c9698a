"""The process-wide autotuning switch, like ``torch.backends.cudnn.benchmark``."""

from __future__ import annotations

import os
import threading
import weakref

#: Environment variable that turns autotuning on for the process (``1``, ``true``, ``yes`` or ``on``).
ENV = "TNCONV_AUTOTUNE"

_TRUE = ("1", "true", "yes", "on")
_state = {"enabled": None}  # None: not set in this process, the environment decides
_followers: "weakref.WeakSet" = weakref.WeakSet()
_lock = threading.Lock()


def set_autotune(enabled: bool) -> None:
    """Turn measured lowering choice on or off for every network compiled with ``autotune=None`` (the default).

    With it on, the first call of a compiled network for new shapes times
    every applicable lowering of each term on the actual tensors and keeps
    the fastest; verdicts persist in :func:`~tnconv.autotune_cache`. Plans
    such networks built under the other setting are dropped, so the next
    call plans anew. Overrides the environment variable ``TNCONV_AUTOTUNE``.

    Example:
        >>> import tnconv
        >>> before = tnconv.autotune_enabled()
        >>> tnconv.set_autotune(True); tnconv.autotune_enabled()
        True
        >>> tnconv.set_autotune(before)
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {enabled!r}")
    _set(enabled)


def _set(state) -> None:
    """Set the switch (``None``: unset, the environment decides); drop followers' plans if the setting changes."""
    before = autotune_enabled()
    _state["enabled"] = state
    if _followers and autotune_enabled() != before:  # cheap when nothing follows (the benchmark toggles per call)
        with _lock:
            followers = list(_followers)
        for compiled in followers:
            compiled._autotune_changed()


def autotune_enabled() -> bool:
    """Whether autotuning is on for networks that follow the process-wide switch.

    :func:`set_autotune` decides once called; before, ``TNCONV_AUTOTUNE``.

    Example:
        >>> import tnconv
        >>> isinstance(tnconv.autotune_enabled(), bool)
        True
    """
    enabled = _state["enabled"]
    if enabled is None:
        return os.environ.get(ENV, "").strip().lower() in _TRUE
    return enabled


class autotuning:  # noqa: N801 -- used like a function: ``with autotuning():``
    """``with autotuning():`` -- :func:`set_autotune` for the block, the previous setting restored after.

    Cheap enough to wrap single calls (the benchmark's autotuned column does).

    Example:
        >>> import tnconv
        >>> with autotuning(True):
        ...     tnconv.autotune_enabled()
        True
    """

    __slots__ = ("enabled", "before")

    def __init__(self, enabled: bool = True):
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool, got {enabled!r}")
        self.enabled = enabled

    def __enter__(self):
        self.before = _state["enabled"]
        _set(self.enabled)
        return self

    def __exit__(self, *exc):
        _set(self.before)
        return False


def follow(compiled) -> None:
    """Register ``compiled`` (weakly): :func:`set_autotune` calls its ``_autotune_changed()`` on a change.

    :class:`~tnconv.Compiled` registers itself when made with ``autotune=None``.

    Example:
        >>> import tnconv
        >>> f = tnconv.compile(tnconv.diagrams.conv(N=1, kernel_size=3))
        >>> f in _followers
        True
    """
    _followers.add(compiled)


__all__ = ["ENV", "set_autotune", "autotune_enabled", "autotuning", "follow"]
