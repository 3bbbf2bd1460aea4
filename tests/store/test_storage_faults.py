"""A full disk or a read-only run dir: one clear message, exit 1, every fold ended, what
was journaled kept and resumable, no traceback.

Real file systems, mounted for each test (root only, else skipped): a small tmpfs that
the test fills, and for a run dir that turns read-only mid-run, an ext4 image on a loop
device mounted ``errors=remount-ro`` whose error the test triggers: the kernel's own
emergency read-only remount, the one that fails writes to files already open (a plain
``mount -o remount,ro`` is refused while the journal is open for writing).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from conftest import FOLDS, base_spec, journal_rows

pytestmark = pytest.mark.timeout(120)

FOLDS_IN_ALL = 12
RESUME_HINT = "free some space (or make RUN_DIR writable) and run again with --resume"


def spec_text(marks: Path, seconds: float = 0.4) -> str:
    return f"""\
name: storage
entrypoint: diskfill:train
workdir: {FOLDS}
params: {{seconds: {seconds}, marks: {marks}}}
search:
  grid: {{lr: [0.1, 0.01, 0.001]}}
cv: {{folds: 4}}
resources: {{gpus: none, workers: 2}}
limits: {{timeout: 30s, grace: 1s}}
retry: {{attempts: 1}}
"""


# -- file systems ------------------------------------------------------------------------
def _sh(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)


def _unmount(where: Path) -> None:
    if _sh("umount", str(where)).returncode != 0:
        _sh("umount", "-l", str(where))  # busy: detach now, freed when the last user goes


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system for the test needs root")


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    _need_root()
    where.mkdir()
    r = _sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where))
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield where
    finally:
        _unmount(where)


def _mount_ext4(image: Path, where: Path) -> subprocess.CompletedProcess[str]:
    return _sh("mount", "-o", "loop,errors=remount-ro", str(image), str(where))


@contextmanager
def ext4(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """``(mount point, image, trigger_fs_error)`` of a 64 MiB ext4 on a loop device."""
    _need_root()
    if not shutil.which("mkfs.ext4"):
        pytest.skip("mkfs.ext4 is not installed")
    image, where = tmp_path / "disk.img", tmp_path / "disk"
    with image.open("wb") as f:
        f.truncate(64 << 20)
    if _sh("mkfs.ext4", "-q", "-F", str(image)).returncode != 0:
        pytest.skip("mkfs.ext4 failed")
    where.mkdir()
    r = _mount_ext4(image, where)
    if r.returncode != 0:
        pytest.skip(f"cannot mount an ext4 image on a loop device here: {r.stderr.strip()}")
    try:
        device = _sh("findmnt", "-n", "-o", "SOURCE", str(where)).stdout.strip()
        trigger = Path("/sys/fs/ext4", os.path.basename(device), "trigger_fs_error")
        if not device or not trigger.exists():
            pytest.skip(f"no {trigger} to make the file system fail")
        yield where, image, trigger
    finally:
        if os.path.ismount(where):
            _unmount(where)


def fill(disk: Path) -> Path:
    """Write ``disk/filler`` until not one more byte fits."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        chunk = 1 << 20
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    finally:
        os.close(fd)
    return filler


# -- runs and their journal ---------------------------------------------------------------
def run_cmd(spec: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "foldrunner", "run", str(spec), "--run-dir", str(run_dir), *extra]


#: in the environment of the runs this module starts, so of every process they start
TAG = "FOLDRUNNER_STORAGE_TEST"


def start(cmd: list[str], tag: str) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, TAG: tag})


def leftovers(tag: str) -> list[psutil.Process]:
    """Live processes started by the run tagged ``tag`` (other tests' are not ours)."""
    deadline = time.monotonic() + 3.0
    while True:
        found = []
        for p in psutil.process_iter():
            try:
                if p.environ().get(TAG) == tag and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except psutil.Error:
                continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def ok_rows(run_dir: Path) -> dict[str, tuple]:
    return {r[0]: r for r in journal_rows(run_dir) if r[2] == "ok"}


def wait_for_ok(proc: subprocess.Popen, run_dir: Path, n: int) -> dict[str, tuple]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = ok_rows(run_dir)
        if len(rows) >= n:
            return rows
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} folds ok after 60s")


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def assert_clear_storage_error(proc: subprocess.Popen, out: str, err: str, tag: str,
                               *needles: str) -> None:
    print(err)  # shown with -rA: the message as a user sees it
    assert proc.returncode == 1, out + err
    assert "Traceback" not in out + err, err
    assert "foldrunner: error: cannot write" in err, err
    assert RESUME_HINT in err, err
    for needle in needles:
        assert needle in err, err
    assert not leftovers(tag)


def assert_kept_then_resumed(spec: Path, run_dir: Path, marks: Path, before: dict[str, tuple]) -> None:
    """What was ok stays ok; --resume finishes the rest and runs none of it again."""
    rows = journal_rows(run_dir)
    for fold_id, row in before.items():
        assert [r for r in rows if r[0] == fold_id] == [row]
    assert len({r[0] for r in rows if r[2] == "ok"}) < FOLDS_IN_ALL  # the run did stop early
    tag = f"{run_dir} --resume"
    resume = start(run_cmd(spec, run_dir, "--resume"), tag)
    out, err = finish(resume)
    assert resume.returncode == 0, out + err
    rows = journal_rows(run_dir)
    final = {fold_id: status for fold_id, _, status, _ in rows}
    assert len(final) == FOLDS_IN_ALL and set(final.values()) == {"ok"}
    for fold_id, row in before.items():
        assert [x for x in rows if x[0] == fold_id] == [row]
        assert sorted(m.name for m in marks.iterdir() if m.name.startswith(f"{fold_id}.")) == [
            f"{fold_id}.1"]
    assert not leftovers(tag)


# -- the scenarios -----------------------------------------------------------------------
def test_disk_fills_mid_run(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text(marks))
    with tmpfs(tmp_path / "disk", "16m") as disk:
        run_dir = disk / "run"
        proc = start(run_cmd(spec, run_dir), str(tmp_path))
        try:
            before = wait_for_ok(proc, run_dir, 3)
            filler = fill(disk)
        finally:
            out, err = finish(proc)
        assert_clear_storage_error(proc, out, err, str(tmp_path),
                                   f"the journal {run_dir / 'journal.sqlite'}", "database or disk is full")
        filler.unlink()  # free the space; then what was journaled is read back
        assert_kept_then_resumed(spec, run_dir, marks, before)


def test_run_dir_turns_read_only_mid_run(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text(marks))
    with ext4(tmp_path) as (disk, image, trigger):
        run_dir = disk / "run"
        proc = start(run_cmd(spec, run_dir), str(tmp_path))
        try:
            before = wait_for_ok(proc, run_dir, 3)
            os.sync()  # what the journal holds now is on the disk, as after any commit interval
            trigger.write_text("foldrunner storage-fault test\n")  # ext4 goes read-only now
        finally:
            out, err = finish(proc)
        assert_clear_storage_error(proc, out, err, str(tmp_path),
                                   f"the journal {run_dir / 'journal.sqlite'}", "Read-only file system")
        # make it writable again, as an admin would: unmount, check, mount
        _unmount(disk)
        fsck = _sh("e2fsck", "-fy", str(image))
        assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr
        assert _mount_ext4(image, disk).returncode == 0
        assert_kept_then_resumed(spec, run_dir, marks, before)


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_unwritable_run_dir_before_the_start(tmp_path, fault):
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text(marks))
    with tmpfs(tmp_path / "disk", "4m") as disk:
        run_dir = disk / "run"
        run_dir.mkdir()
        if fault == "read-only":
            r = _sh("mount", "-o", "remount,ro", str(disk))
            assert r.returncode == 0, r.stderr
            reason = "Read-only file system"
        else:
            fill(disk)
            reason = "No space left on device"
        proc = start(run_cmd(spec, run_dir), str(tmp_path))
        out, err = finish(proc)
        assert_clear_storage_error(proc, out, err, str(tmp_path), str(run_dir), reason)
        assert not list(marks.iterdir())  # nothing was launched


# -- the pieces, in process ---------------------------------------------------------------
def test_journal_writes_and_results_on_a_full_disk(tmp_path):
    from foldrunner.errors import StorageError
    from foldrunner.store.journal import Journal
    from foldrunner.wire.outcome import AttemptResult, Status
    from foldrunner.store.paths import RunPaths
    from foldrunner.config.plan import build_plan
    from foldrunner.store.results import build_table, write_results
    from foldrunner.config.spec import load_spec

    plan = build_plan(load_spec(base_spec(tmp_path, cv={"folds": 3})))
    with tmpfs(tmp_path / "disk", "2m") as disk:
        paths = RunPaths(disk / "run")
        paths.make()
        with Journal(paths.journal) as journal:
            journal.initialise(run_id="r", spec_yaml="", plan=plan, name="t")
            fid = plan.folds[0].fold_id
            journal.start_attempt(fid, 1, started_at=1.0, pid=1, pid_started_at=1.0, gpu=None,
                                  log_path="x")
            fill(disk)
            writes = [
                lambda: journal.start_attempt(plan.folds[1].fold_id, 1, started_at=1.0, pid=2,
                                              pid_started_at=1.0, gpu=None, log_path="y"),
                lambda: journal.end_attempt(AttemptResult(
                    fold_id=fid, attempt=1, status=Status.OK, started_at=1.0, ended_at=2.0,
                    duration_s=1.0, metrics={"acc": 1.0, "pad": "x" * 8192})),
                lambda: journal.set_report(fid, 1, {"pad": "x" * 8192}, 2.0),
                lambda: journal.set_owner({"pid": 1, "pad": "x" * 8192}),
                lambda: journal.initialise(run_id="r2", spec_yaml="x" * 8192, plan=plan, name="t"),
            ]
            for write in writes:
                with pytest.raises(StorageError) as info:
                    write()
                assert str(paths.journal) in str(info.value)
                assert "database or disk is full" in str(info.value)
                assert info.value.exit_code == 1
            assert [r["status"] for r in journal.attempts()] == ["running"]  # reads still work
            with pytest.raises(StorageError) as info:
                write_results(build_table(journal), paths)
            assert f"the results file {paths.results_csv}" in str(info.value)
            assert "No space left on device" in str(info.value)
            assert not [p for p in paths.root.iterdir() if p.name.endswith(".tmp")]
