"""Tests of foldrunner.store.paths: the per-fold paths of a run directory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from foldrunner.store.paths import RunPaths, child_path

pytestmark = pytest.mark.timeout(60)


def test_a_fold_s_log_is_the_plain_join(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path / "run")
    log = paths.log("t3-r1-f7", 2)
    plain = paths.logs / "t3-r1-f7.2.log"
    assert log == plain and str(log) == str(plain) and log.parts == plain.parts
    assert log.name == "t3-r1-f7.2.log" and log.parent == paths.logs and hash(log) == hash(plain)


@pytest.mark.parametrize("parent", [Path("/a/b"), Path("rel"), Path("."), Path("/")])
def test_child_path_is_the_plain_join(parent: Path) -> None:
    for name in ("x.log", ".hidden.1.tmp"):
        assert str(child_path(parent, name)) == str(parent / name)
        assert child_path(parent, name).parts == (parent / name).parts
    assert child_path(parent, "a/b") == parent / "a" / "b"  # not a plain name: the plain join


@pytest.mark.skipif(sys.version_info >= (3, 13) or not hasattr(Path, "_make_child_relpath"),
                    reason="child_path joins past pathlib's parsing with 3.10-3.12's "
                           "_make_child_relpath (3.14's pathlib interns nothing)")
def test_a_fold_s_log_name_is_not_interned(tmp_path: Path) -> None:
    """pathlib (before 3.14) interns the parts it parses: a name made for each fold would be
    a new entry of the interpreter's table of interned strings every time (the soak's
    orchestrator RSS crept by it; on 3.12 the names are never freed)."""
    log = RunPaths(tmp_path).log("t9-r8-f7654", 321)
    fresh = "".join(["t9-r8-f7654", ".321.log"])  # equal to log.name, made at run time
    assert sys.intern(fresh) is fresh  # no equal string was interned before
    assert log.name == fresh
