"""The orchestrator's side of the zygote (opt-in, ``resources.zygote: true``): a fork
server of one run's own that imports the spec's ``preload`` modules once and forks each
fold from that state. What the zygote does in its own process is
:mod:`foldrunner.launch.zygoteinit`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from foldrunner.errors import FoldrunnerError
from foldrunner.launch.forkserver import ZYGOTE_PRELOAD, ZYGOTES, FoldServer
from foldrunner.launch.zygoteinit import ENV

ZYGOTE_START_TIMEOUT = 300.0
"""Seconds the zygote may take to import its preloads before it is given up."""


class ZygoteError(FoldrunnerError):
    """The zygote could not be started; the message says why."""


def start_zygote(preload: list[str], workdir: str, env: dict[str, str], status: Path) -> FoldServer:
    """Start a zygote for one run: it sets ``env``, imports ``preload``, then forks folds.

    ``status`` is the file where it says ``ready: ...`` or ``error: ...``. Its
    configuration goes through this process's environment (:data:`ENV`), set only while
    the server starts: ``multiprocess`` hands a fork server nothing else.
    """
    server = FoldServer(ZYGOTE_PRELOAD)
    status.unlink(missing_ok=True)
    cfg = {"preload": list(preload), "sys_path": [workdir, *sys.path], "status": str(status),
           "env": dict(env)}
    os.environ[ENV] = json.dumps(cfg)
    try:
        server.ensure_running()
    finally:
        del os.environ[ENV]
    ZYGOTES.append(server)
    pid = server.pid
    assert pid is not None
    deadline = time.monotonic() + ZYGOTE_START_TIMEOUT
    while True:
        text = status.read_text() if status.exists() else ""
        if text.startswith("ready"):
            return server
        if text.startswith("error") or os.waitpid(pid, os.WNOHANG)[0] or time.monotonic() > deadline:
            stop_zygote(server)
            raise ZygoteError(
                text or f"the zygote did not finish importing {preload} in {ZYGOTE_START_TIMEOUT:g}s"
            )
        time.sleep(0.05)


def stop_zygote(server: FoldServer, wait: float = 5.0) -> None:
    """End a zygote: it exits once its last fold has; SIGKILL if it lingers; reap it."""
    server.stop(wait)
    if server in ZYGOTES:
        ZYGOTES.remove(server)
