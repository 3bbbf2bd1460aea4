"""The one ``multiprocess`` workaround that runs inside a fold's process, right after it
came to exist: dropping what the fork server hands every child.

It lives in ``launch/`` with the other workarounds; :mod:`foldrunner.child.entry` calls it
first thing. This module imports nothing at import time, so the fold's process stays light;
``multiprocess`` is imported when it is called, and by then it is already loaded (the
fold's process is a child of ``multiprocess``'s fork server or of its spawn entry).
"""

from __future__ import annotations

import os


def drop_inherited_server_fds() -> None:
    """Close what ``multiprocess`` hands every child of a fork server: the server's
    "alive" pipe and the resource tracker's pipe. Held by a fold, they would keep the
    server (and the tracker) running after the orchestrator died.

    Both are private attributes of ``multiprocess`` (``forkserver._forkserver`` and its
    ``_forkserver_alive_fd``, ``resource_tracker._resource_tracker._fd``); an attribute
    that is missing is skipped.
    """
    from multiprocess import forkserver, resource_tracker

    server = forkserver._forkserver
    tracker = resource_tracker._resource_tracker
    for owner, attr in ((server, "_forkserver_alive_fd"), (tracker, "_fd")):
        fd = getattr(owner, attr, None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
            setattr(owner, attr, None)
