"""Warm spares: each serves one fold only, carries its slot's GPU, is ended at the end,
and a spare that dies while waiting is replaced."""

from __future__ import annotations

import json

import pytest

import foldrunner
from conftest import base_spec

pytestmark = pytest.mark.timeout(90)


def spare_spec(tmp_path, **kw):
    spec = base_spec(
        tmp_path, entrypoint="spare_preload:fold", preload=["spare_preload"],
        env={"SPARE_TEST_DIR": str(tmp_path)}, cv={"folds": 6}, params={"seconds": 0.5},
        resources={"spares": True, "gpus": [0, 1], "per_gpu": 1, "workers": None}, **kw)
    return spec


def imports(tmp_path):
    return {int(p.name.split(".")[1]): json.loads(p.read_text()) for p in tmp_path.glob("import.*")}


def test_each_spare_serves_one_fold_and_carries_its_gpu(tmp_path):
    df = foldrunner.run(spare_spec(tmp_path))
    assert list(df["status"]) == ["ok"] * 6
    pids = list(df["metric_pid"])
    assert len(set(pids)) == 6  # a fresh process per fold: no spare served twice
    seen = imports(tmp_path)
    # the first fold of each slot starts cold (no spare exists yet); every later fold
    # runs in a spare that imported the preload, with its slot's GPU set before that
    first = set(df.sort_values("started_at")["fold_id"].iloc[:2])
    for _, row in df.iterrows():
        pid = row["metric_pid"]
        assert row["metric_cuda"] == str(row["gpu"])
        if row["fold_id"] in first:
            assert pid not in seen
            continue
        assert pid in seen, f"{row['fold_id']} did not run in a warm spare"
        assert seen[pid]["cuda"] == str(row["gpu"])
    assert len(seen) == 4  # no more spares than folds waiting for them
    # (the autouse fixture checks that no spare or fold process survived)


def test_without_spares_every_fold_is_cold(tmp_path):
    spec = spare_spec(tmp_path)
    spec["resources"]["spares"] = False
    df = foldrunner.run(spec)
    assert list(df["status"]) == ["ok"] * 6
    assert imports(tmp_path) == {}  # the preload was never imported ahead of a fold
    assert not (tmp_path / "run" / "logs" / "spares").exists()


def test_a_spare_that_dies_while_waiting_is_replaced(tmp_path):
    (tmp_path / "crash-first-spare").write_text("")
    notes: list[str] = []
    df = foldrunner.run(spare_spec(tmp_path), notes=notes.append)
    assert list(df["status"]) == ["ok"] * 6
    assert any("warm spare of slot" in n and "exited with code 13" in n for n in notes), notes
    assert not (tmp_path / "crash-first-spare").exists()


def test_spares_are_switched_off_after_repeated_deaths(tmp_path):
    (tmp_path / "crash-every-spare").write_text("")
    notes: list[str] = []
    df = foldrunner.run(spare_spec(tmp_path), notes=notes.append)
    assert list(df["status"]) == ["ok"] * 6  # the folds ran cold
    assert any("warm spares switched off: 3 spares in a row died" in n for n in notes), notes
    assert imports(tmp_path) == {}


def test_a_preload_that_cannot_be_imported_is_reported_once(tmp_path):
    spec = spare_spec(tmp_path, retry={"attempts": 1})
    spec["preload"] = ["no_such_module_for_spares", "os"]
    notes: list[str] = []
    df = foldrunner.run(spec, notes=notes.append)
    # a preload that cannot be imported is reported once; folds still run
    assert list(df["status"]) == ["ok"] * 6
    assert sum("cannot import 'no_such_module_for_spares'" in n for n in notes) == 1
