"""The zygote (opt-in): folds forked from a server that imported the preloads; it refuses
to fork once anything ran in it, and foldrunner goes on without it."""

from __future__ import annotations

import pytest

import foldrunner
from conftest import base_spec

pytestmark = pytest.mark.timeout(90)


def zspec(tmp_path, **kw):
    return base_spec(tmp_path, entrypoint="zygote_preload:fold", preload=["zygote_preload"],
                     cv={"folds": 6}, resources={"zygote": True, "spares": False}, **kw)


def test_folds_are_forked_from_the_zygote_with_preloads_imported(tmp_path):
    notes: list[str] = []
    df = foldrunner.run(zspec(tmp_path), notes=notes.append)
    assert list(df["status"]) == ["ok"] * 6, notes
    assert df["metric_pid"].nunique() == 6  # still a fresh process per fold
    # the preload was imported once, in the zygote, before any fold: not in the folds
    assert df["metric_imported_in"].nunique() == 1
    assert (df["metric_imported_in"] != df["metric_pid"]).all()
    assert (tmp_path / "run" / "zygote.status").read_text().startswith("ready")
    assert notes == []


def test_the_zygote_refuses_to_fork_once_a_thread_started_in_it(tmp_path):
    spec = zspec(tmp_path, env={"ZYGOTE_TEST_LATE_THREAD": "1"}, params={"seconds": 0.4})
    notes: list[str] = []
    df = foldrunner.run(spec, notes=notes.append)
    assert list(df["status"]) == ["ok"] * 6  # the run went on from the plain fold server
    assert any("the zygote stopped serving (error: refused to fork" in n for n in notes), notes
    assert df["metric_imported_in"].nunique() > 1  # later folds imported it themselves
    # the refusal is local: folds forked before it ran on untouched, none was retried
    assert list(df["attempts"]) == [1] * 6, df[["fold_id", "attempts", "error"]]


def test_a_preload_the_zygote_cannot_import_is_reported(tmp_path):
    spec = zspec(tmp_path)
    spec["preload"] = ["no_such_module_for_the_zygote"]
    notes: list[str] = []
    df = foldrunner.run(spec, notes=notes.append)
    assert list(df["status"]) == ["ok"] * 6
    assert any("resources.zygote: not used: error: cannot import the preloads: "
               "ModuleNotFoundError" in n for n in notes), notes


def test_a_refused_resume_leaves_no_zygote_behind(tmp_path):
    import psutil

    from foldrunner.errors import RunDirError
    from foldrunner.launch import forkserver

    foldrunner.run(zspec(tmp_path))
    changed = zspec(tmp_path)
    changed["cv"] = {"folds": 7}
    with pytest.raises(RunDirError, match="differs from the journal"):
        foldrunner.run(changed, resume=True)
    assert forkserver.ZYGOTES == []
    kids = [" ".join(p.cmdline()) for p in psutil.Process().children()]
    assert not any("foldrunner.launch.zygoteinit" in k for k in kids), kids
