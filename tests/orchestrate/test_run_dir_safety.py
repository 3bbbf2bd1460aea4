"""The run directory is private where it must be: spec.yaml and the journal (which may
hold secrets from ``env``) are 0600 whatever the umask, no file of the run dir is written
through a symlink planted in it, and a spec named ``.`` or ``..`` is refused."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import foldrunner
from conftest import base_spec
from foldrunner.errors import RunDirError
from foldrunner.store.journal import Journal
from foldrunner.orchestrate.lock import RunLock

pytestmark = pytest.mark.timeout(120)

PRECIOUS = "precious: not the run's to write\n"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foldrunner", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=90)


def spec_file(tmp_path: Path, **sections: Any) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(base_spec(tmp_path, entrypoint="runsafety:fold", **sections)))
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------- private files
def test_spec_and_journal_are_private_whatever_the_umask(tmp_path: Path) -> None:
    spec = base_spec(tmp_path, entrypoint="runsafety:fold", env={"API_KEY": "secret"})
    old = os.umask(0)
    try:
        df = foldrunner.run(spec)
    finally:
        os.umask(old)
    assert list(df["status"]) == ["ok"]
    # as the fold saw them while the run was live, the journal's -wal and -shm included
    seen = df.iloc[0]
    seen_modes = [seen[f"metric_{k}"] for k in ("journal", "wal", "shm", "spec")]
    assert seen_modes == [0o600] * 4
    run_dir = tmp_path / "run"
    assert mode(run_dir / "spec.yaml") == 0o600
    assert mode(run_dir / "journal.sqlite") == 0o600


def test_a_journal_left_readable_by_others_is_made_private_on_resume(tmp_path: Path) -> None:
    spec = base_spec(tmp_path, entrypoint="runsafety:fold")
    foldrunner.run(spec)
    journal = tmp_path / "run" / "journal.sqlite"
    journal.chmod(0o644)  # e.g. written by an older foldrunner
    foldrunner.run(spec, resume=True)
    assert mode(journal) == 0o600


# ---------------------------------------------------------------- planted symlinks
@pytest.mark.parametrize("name", ["run.lock", "spec.yaml", "journal.sqlite", "journal.sqlite-wal",
                                  "logs"])
def test_a_planted_symlink_is_refused_and_nothing_is_launched(tmp_path: Path, name: str) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    victim = tmp_path / "victim"
    if name == "logs":
        victim.mkdir()
    else:
        victim.write_text(PRECIOUS)
    (run_dir / name).symlink_to(victim)
    proc = cli("run", str(spec_file(tmp_path)), "--run-dir", str(run_dir), "--resume")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(run_dir / name) in proc.stderr and "symlink" in proc.stderr, proc.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [name]  # nothing launched, no journal
    if name == "logs":
        assert list(victim.iterdir()) == []
    else:
        assert victim.read_text() == PRECIOUS


def test_journal_and_lock_refuse_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("")  # SQLite would happily turn an empty file into a journal
    link = tmp_path / "journal.sqlite"
    link.symlink_to(victim)
    with pytest.raises(RunDirError, match="symlink"):
        Journal(link)
    victim.write_text(PRECIOUS)
    lock = tmp_path / "run.lock"
    lock.symlink_to(victim)
    with pytest.raises(RunDirError, match="symlink"):
        RunLock(lock).acquire()
    assert victim.read_text() == PRECIOUS


def test_symlinks_at_rewritten_files_and_logs_are_never_followed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    planted = ["results.csv", "results.parquet", "zygote.status", "zygote.tmp",
               "logs/t0-r0-f0.1.log", "logs/preflight.log"]
    victims = {}
    for i, name in enumerate(planted):
        victims[name] = tmp_path / f"victim{i}"
        victims[name].write_text(PRECIOUS)
        (run_dir / name).symlink_to(victims[name])
    notes: list[str] = []
    spec = base_spec(tmp_path, entrypoint="runsafety:fold", preload=["runsafety"],
                     resources={"zygote": True, "spares": False})
    df = foldrunner.run(spec, notes=notes.append)
    assert list(df["status"]) == ["ok"], notes
    assert notes == []  # the zygote served the fold
    assert {name: v.read_text() for name, v in victims.items()} == dict.fromkeys(planted, PRECIOUS)
    for name in ("results.csv", "results.parquet", "zygote.status"):
        assert not (run_dir / name).is_symlink() and (run_dir / name).is_file(), name
    assert (run_dir / "zygote.status").read_text().startswith("ready")


# ---------------------------------------------------------------- the spec's name
@pytest.mark.parametrize("name", [".", ".."])
def test_a_name_that_is_a_directory_reference_is_refused(tmp_path: Path, name: str) -> None:
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    spec = base_spec(tmp_path, entrypoint="runsafety:fold", name=name)
    del spec["output"]  # the default runs/{name}: runs/.. would be the working directory
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = cli("run", str(path), cwd=work)
    assert proc.returncode == 2, proc.stderr
    assert f"name (line 1): invalid name '{name}'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    good = dict(spec, name="ok")
    path.write_text(yaml.safe_dump(good, sort_keys=False))
    proc = cli("run", str(path), "-o", f"name={name}", cwd=work)
    assert proc.returncode == 2, proc.stderr
    assert f"name (from -o name={name}): invalid name '{name}'" in proc.stderr, proc.stderr
    assert not list(tmp_path.rglob("journal.sqlite"))
