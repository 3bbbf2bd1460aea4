"""Imported first by each of foldrunner's fork servers (it heads their preload lists,
``foldrunner.launch.forkserver.SERVER_PRELOAD`` and ``ZYGOTE_PRELOAD``): a module that
works by being imported, since ``multiprocess`` lets a fork server run nothing else.

The server leaves the orchestrator's session at once, so the signals a terminal or a
scheduler sends to the orchestrator's process group (SIGHUP when a tmux window closes,
Ctrl-C's SIGINT, ``kill -- -PGID``) never reach it: a stop is the orchestrator's to
carry out, fold by fold, with each fold's grace. The server still ends with the
orchestrator: it exits when its "alive" pipe reaches end of file, which happens when the
orchestrator closes it or dies (folds do not hold that pipe; see
``foldrunner.launch.postfork.drop_inherited_server_fds``).

Importing this module anywhere but in a fork server (``python -c`` running
``multiprocess.forkserver.main``) does nothing.
"""

from __future__ import annotations

import os
import sys


def _in_fork_server() -> bool:
    return sys.argv[:1] == ["-c"] and "multiprocess.forkserver" in sys.modules


if _in_fork_server():
    try:
        os.setsid()
    except OSError:  # already a session leader
        pass
