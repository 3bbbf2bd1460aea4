"""Entry points for the run-dir safety tests: a fold that prints, and reports the modes
of the run directory's private files as it sees them while the run is live."""

import os
import stat


def _mode(path: str) -> int:
    try:
        return stat.S_IMODE(os.lstat(path).st_mode)
    except FileNotFoundError:
        return -1


def fold(ctx):
    print(f"output of fold {ctx.fold_id}", flush=True)
    names = {"journal": "journal.sqlite", "wal": "journal.sqlite-wal",
             "shm": "journal.sqlite-shm", "spec": "spec.yaml"}
    return {key: _mode(os.path.join(ctx.run_dir, name)) for key, name in names.items()}
