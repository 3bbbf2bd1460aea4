"""Tests of foldrunner.config.spec: the strict YAML loader, the messages, overrides, round trips."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from foldrunner.errors import SpecError
from foldrunner.config.fields import RETRYABLE_STATUSES
from foldrunner.config.spec import (CVSpec, LimitsSpec, ObjectiveSpec, OutputSpec, RandomSearch,
                                    ResourcesSpec, RetrySpec, SearchSpec, Spec, load_spec)
from foldrunner.config.units import format_duration, parse_duration, parse_size

pytestmark = pytest.mark.timeout(30)

# CONTRACT.md section 1, verbatim.
EXAMPLE = """\
name: digits-mlp                 # required; letters, digits, '.', '_' and '-'
entrypoint: digits:train_fold    # required; module:function
workdir: .                       # put on sys.path in each fold; relative to the spec file
preload: [tensorflow]            # optional: modules a warm spare imports before its fold comes
params:                          # fixed parameters handed to every fold
  epochs: 5
search:                          # optional; without it: one trial with `params`
  grid:                          # cartesian product, in the order written
    lr: [0.001, 0.01]
    units: [32, 64]
  # or:
  # random:
  #   samples: 20
  #   seed: 0
  #   space:
  #     lr:      {loguniform: [1.0e-4, 1.0e-1]}
  #     units:   {choice: [32, 64, 128]}
  #     dropout: {uniform: [0.0, 0.5]}
  #     layers:  {randint: [1, 4]}
cv:
  folds: 5                       # fold index 0 .. folds-1
  replicates: 1                  # repeated cross-validation
  seed: 0                        # base seed of the splits
objective:                       # optional: what `results --summary` ranks by
  metric: val_accuracy
  mode: max                      # max | min
resources:
  gpus: auto                     # auto | none | list of physical indices, e.g. [0, 2]
  per_gpu: 1                     # folds that may share one GPU at a time
  workers: null                  # concurrent folds without GPUs (default: CPU count)
  min_free_memory: 1GiB          # with `auto`: skip GPUs with less free memory
  spares: true                   # one warm spare child per slot, each used for one fold only
  zygote: false                  # opt-in: fork folds from a server that preloaded `preload`
limits:
  timeout: 30m                   # wall clock of one attempt
  grace: 10s                     # SIGTERM to SIGKILL
  max_rss: null                  # host memory of the fold's whole process tree
  max_gpu_memory: null           # GPU memory of the fold's processes (NVML)
  exit_timeout: 30s              # a fold that has sent its result must exit within this
retry:
  attempts: 3                    # attempts per fold in all (1 = no retry)
  on: [timeout, crashed, memory] # outcomes that are retried; `error` may be added
  backoff: 5s                    # before attempt n+1: backoff * 2**(n-1), with jitter
env:                             # extra environment for every fold
  TF_CPP_MIN_LOG_LEVEL: "2"
output:
  dir: runs/{name}               # run directory; relative to the working directory
"""

RANDOM_EXAMPLE = EXAMPLE.replace("""\
  grid:                          # cartesian product, in the order written
    lr: [0.001, 0.01]
    units: [32, 64]
  # or:
  # random:
  #   samples: 20
  #   seed: 0
  #   space:
  #     lr:      {loguniform: [1.0e-4, 1.0e-1]}
  #     units:   {choice: [32, 64, 128]}
  #     dropout: {uniform: [0.0, 0.5]}
  #     layers:  {randint: [1, 4]}
""", """\
  random:
    samples: 20
    seed: 0
    space:
      lr:      {loguniform: [1.0e-4, 1.0e-1]}
      units:   {choice: [32, 64, 128]}
      dropout: {uniform: [0.0, 0.5]}
      layers:  {randint: [1, 4]}
""")

HEAD = "name: t\nentrypoint: m:f\n"  # two lines: what a case adds starts at line 3


def write(tmp_path: Path, text: str | bytes, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def problems(tmp_path: Path, text: str | bytes, overrides: Any = ()) -> list[str]:
    """The problems of a spec file that must fail."""
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides)
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"invalid fold spec {path}: {len(info.value.problems)} problem")
    return info.value.problems


# ---------------------------------------------------------------- valid specs
def test_contract_example_loads_with_typed_values(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    spec = load_spec(path)
    assert spec.name == "digits-mlp"
    assert spec.entrypoint == "digits:train_fold"
    assert spec.workdir == tmp_path.resolve() and spec.workdir.is_absolute()
    assert spec.preload == ["tensorflow"]
    assert spec.params == {"epochs": 5}
    assert spec.search == SearchSpec(grid={"lr": [0.001, 0.01], "units": [32, 64]})
    assert spec.search is not None and spec.search.random is None
    assert list(spec.search.grid or {}) == ["lr", "units"]
    assert spec.cv == CVSpec(folds=5, replicates=1, seed=0)
    assert spec.objective == ObjectiveSpec(metric="val_accuracy", mode="max")
    assert spec.resources == ResourcesSpec(gpus="auto", per_gpu=1, workers=None,
                                           min_free_memory=1073741824, spares=True, zygote=False)
    assert spec.resources.min_free_memory == 1073741824
    assert spec.limits.timeout == 1800.0 and isinstance(spec.limits.timeout, float)
    assert (spec.limits.grace, spec.limits.exit_timeout) == (10.0, 30.0)
    assert (spec.limits.max_rss, spec.limits.max_gpu_memory, spec.limits.stall) == (None, None, None)
    assert spec.retry.on == ["timeout", "crashed", "memory"]  # the key `on` is kept
    assert (spec.retry.attempts, spec.retry.backoff) == (3, 5.0)
    assert spec.env == {"TF_CPP_MIN_LOG_LEVEL": "2"}
    assert spec.output == OutputSpec(dir="runs/{name}")
    assert spec.run_dir() == Path("runs/digits-mlp")
    assert spec.source == path.absolute()


def test_contract_random_variant(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, RANDOM_EXAMPLE))
    assert spec.search is not None and spec.search.grid is None
    assert spec.search.random == RandomSearch(samples=20, seed=0, space={
        "lr": {"loguniform": [1e-4, 0.1]}, "units": {"choice": [32, 64, 128]},
        "dropout": {"uniform": [0.0, 0.5]}, "layers": {"randint": [1, 4]}})


def test_defaults(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, HEAD))
    assert spec.workdir == tmp_path.resolve()
    assert (spec.preload, spec.params, spec.env) == ([], {}, {})
    assert spec.search is None and spec.objective is None
    assert spec.cv == CVSpec() and (spec.cv.folds, spec.cv.replicates, spec.cv.seed) == (5, 1, 0)
    r = spec.resources
    assert (r.gpus, r.per_gpu, r.workers, r.min_free_memory, r.spares, r.zygote) == (
        "auto", 1, None, 1 << 30, True, False)
    assert spec.limits == LimitsSpec(timeout=1800.0, grace=10.0, max_rss=None, max_gpu_memory=None,
                                     exit_timeout=30.0, stall=None)
    assert spec.retry == RetrySpec(attempts=3, on=["timeout", "crashed", "memory"], backoff=5.0)
    assert spec.output.dir == "runs/{name}" and spec.run_dir() == Path("runs/t")
    assert RETRYABLE_STATUSES == ("timeout", "crashed", "memory", "error")


def test_empty_sections_mean_defaults(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, HEAD + "cv:\nlimits:\n  # timeout: 5m\nsearch:\nobjective:\n"))
    assert spec.cv == CVSpec() and spec.limits == LimitsSpec()
    assert spec.search is None and spec.objective is None


def test_explicit_values(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, HEAD + """\
resources: {gpus: [0, 2], per_gpu: 2, workers: 3, min_free_memory: 0, spares: false, zygote: true}
limits: {timeout: 1h30m, grace: 250ms, max_rss: 2GiB, max_gpu_memory: 1.5GB, stall: 90}
retry: {attempts: 1, on: [error, timeout], backoff: 0}
env: {A: 3, B: 0.5, C: x}
output: {dir: '/tmp/out/{name}-x'}
preload: [tensorflow.keras, numpy]
"""))
    assert spec.resources.gpus == [0, 2] and spec.resources.workers == 3
    assert (spec.resources.min_free_memory, spec.resources.spares, spec.resources.zygote) == (0, False, True)
    assert spec.limits == LimitsSpec(timeout=5400.0, grace=0.25, max_rss=2147483648,
                                     max_gpu_memory=1500000000, stall=90.0)
    assert spec.retry == RetrySpec(attempts=1, on=["error", "timeout"], backoff=0.0)
    assert spec.env == {"A": "3", "B": "0.5", "C": "x"}
    assert spec.run_dir() == Path("/tmp/out/t-x")
    assert spec.preload == ["tensorflow.keras", "numpy"]


def test_yaml_1_2_scalars(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, HEAD + """\
params:
  a: yes
  b: no
  c: on
  d: off
  e: 1:30
  f: 0755
  g: 1e-4
  h: 0x1F
  i: 0o17
  j: TRUE
  k: False
  l: ~
  m: 2024-01-01
  n: .inf
  o: 1_000
  p: -7
  q: 3.
  r: =
"""))
    assert spec.params == {"a": "yes", "b": "no", "c": "on", "d": "off", "e": "1:30", "f": "0755",
                           "g": 1e-4, "h": 31, "i": 15, "j": True, "k": False, "l": None,
                           "m": "2024-01-01", "n": math.inf, "o": "1_000", "p": -7, "q": 3.0, "r": "="}
    assert [type(spec.params[k]) for k in "ghjq"] == [float, int, bool, float]


def test_search_key_may_override_param(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, HEAD + "params: {lr: 1}\nsearch: {grid: {lr: [2, 3]}}\n"))
    assert spec.params == {"lr": 1} and spec.search is not None and spec.search.grid == {"lr": [2, 3]}


def test_workdir_relative_to_spec_file(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "specs").mkdir()
    spec = load_spec(write(tmp_path / "specs", HEAD + "workdir: ../code\n"))
    assert spec.workdir == (tmp_path / "code").resolve()


# ---------------------------------------------------------------- one bad thing at a time
BAD_CASES = [
    ("unknown top key", "limts: {timeout: 5m}\n", "limts (line 3): unknown key; did you mean 'limits'?"),
    ("unknown nested key", "limits:\n  timout: 5m\n",
     "limits.timout (line 4): unknown key; did you mean 'timeout'?"),
    ("unknown key, no match", "zzz: 1\n", "zzz (line 3): unknown key; expected one of: name, entrypoint,"
     " workdir, preload, params, search, cv, objective, resources, limits, retry, env, output,"
     " backend, ray"),
    ("str for int", "cv:\n  folds: '3'\n", "cv.folds (line 4): expected an integer, got '3' (a string)"),
    ("bool for int", "cv: {folds: true}\n", "cv.folds (line 3): expected an integer, got true (a boolean)"),
    ("float for int", "cv:\n  replicates: 2.0\n", "cv.replicates (line 4): expected an integer, got 2.0 (a number)"),
    ("too few folds", "cv:\n  folds: 0\n", "cv.folds (line 4): must be at least 1, got 0"),
    ("too many folds", "cv:\n  folds: 1001\n", "cv.folds (line 4): must be at most 1000, got 1001"),
    ("section not a mapping", "limits: 5m\n", "limits (line 3): expected a mapping, got '5m' (a string)"),
    ("yes for bool", "resources:\n  spares: yes\n", "resources.spares (line 4): expected true or false,"
     " got 'yes' (a string); `yes` is not a boolean in this YAML: write true or false"),
    ("duration words", "limits:\n  timeout: 5 minutes\n",
     "limits.timeout (line 4): invalid duration '5 minutes': use e.g. 90, 90s, 15m, 2h, 1h30m"),
    ("negative duration", "limits:\n  grace: -1s\n",
     "limits.grace (line 4): invalid duration '-1s': use e.g. 90, 90s, 15m, 2h, 1h30m"),
    ("bool duration", "limits:\n  timeout: true\n",
     "limits.timeout (line 4): invalid duration true: use e.g. 90, 90s, 15m, 2h, 1h30m"),
    ("zero duration", "limits:\n  exit_timeout: 0\n", "limits.exit_timeout (line 4): invalid duration 0:"
     " must be more than 0 (use e.g. 90, 90s, 15m, 2h, 1h30m)"),
    ("sexagesimal duration", "limits:\n  stall: 1:30\n",
     "limits.stall (line 4): invalid duration '1:30': use e.g. 90, 90s, 15m, 2h, 1h30m"),
    ("negative backoff", "retry:\n  backoff: -5\n", "retry.backoff (line 4): invalid duration -5:"
     " must be 0 or more (use e.g. 90, 90s, 15m, 2h, 1h30m)"),
    ("ambiguous size", "limits:\n  max_rss: 512M\n", "limits.max_rss (line 4): invalid size '512M':"
     " 'M' is ambiguous; write 512MiB (1024-based) or 512MB (1000-based)"),
    ("garbage size", "resources:\n  min_free_memory: lots\n", "resources.min_free_memory (line 4):"
     " invalid size 'lots': use e.g. 1073741824 (bytes), 512MiB, 2GiB, 1.5GB"),
    ("zero size", "limits:\n  max_gpu_memory: 0\n",
     "limits.max_gpu_memory (line 4): invalid size 0: must be more than 0 bytes"),
    ("empty grid", "search:\n  grid: {}\n",
     "search.grid (line 4): empty grid: give at least one parameter and its values"),
    ("empty grid list", "search:\n  grid:\n    lr: []\n", "search.grid.lr (line 5): empty list of values"),
    ("grid value not a list", "search:\n  grid:\n    lr: 0.1\n",
     "search.grid.lr (line 5): expected a list, got 0.1 (a number)"),
    ("grid and random", "search:\n  grid: {lr: [1]}\n  random: {samples: 2, space: {lr: {choice: [1]}}}\n",
     "search (line 3): give exactly one of grid, random or optuna"),
    ("neither grid nor random", "search: {}\n", "search (line 3): give exactly one of grid, random or optuna"),
    ("empty space", "search:\n  random: {samples: 2, space: {}}\n",
     "search.random.space (line 4): empty space: give at least one parameter and its distribution"),
    ("no samples", "search:\n  random:\n    space: {lr: {choice: [1]}}\n",
     "search.random.samples (line 4): required key is missing"),
    ("unknown dist", "search:\n  random:\n    samples: 2\n    space:\n      lr: {normal: [0, 1]}\n",
     "search.random.space.lr (line 7): unknown distribution 'normal' (did you mean 'uniform'?); expected"
     " one of {loguniform: [low, high]}, {uniform: [low, high]}, {choice: [...]}, {randint: [low, high]}"),
    ("loguniform from 0", "search:\n  random:\n    samples: 2\n    space:\n      lr: {loguniform: [0, 1]}\n",
     "search.random.space.lr (line 7): loguniform: needs 0 < low < high; got [0, 1]"),
    ("uniform reversed", "search:\n  random:\n    samples: 2\n    space:\n      d: {uniform: [0.5, 0.1]}\n",
     "search.random.space.d (line 7): uniform: needs low < high; got [0.5, 0.1]"),
    ("randint floats", "search:\n  random:\n    samples: 2\n    space:\n      n: {randint: [1.5, 4]}\n",
     "search.random.space.n (line 7): randint: low and high must be integers; got [1.5, 4]"),
    ("randint reversed", "search:\n  random:\n    samples: 2\n    space:\n      n: {randint: [4, 1]}\n",
     "search.random.space.n (line 7): randint: needs low <= high (both inclusive); got [4, 1]"),
    ("uniform three values", "search:\n  random:\n    samples: 2\n    space:\n      d: {uniform: [0, 1, 2]}\n",
     "search.random.space.d (line 7): uniform: expected [low, high], got a list"),
    ("empty choice", "search:\n  random:\n    samples: 2\n    space:\n      u: {choice: []}\n",
     "search.random.space.u (line 7): choice: expected a non-empty list of values, got a list"),
    ("dist not a mapping", "search:\n  random:\n    samples: 2\n    space:\n      u: [1, 2]\n",
     "search.random.space.u (line 7): expected one of {loguniform: [low, high]}, {uniform: [low, high]},"
     " {choice: [...]}, {randint: [low, high]}; got a list"),
    ("gpus no", "resources:\n  gpus: no\n", "resources.gpus (line 4): expected auto, none or a list of GPU"
     " indices such as [0, 2]; got 'no'; `no` is not a boolean here: write `none` to run without GPUs"),
    ("gpus int", "resources:\n  gpus: 1\n", "resources.gpus (line 4): expected auto, none or a list of GPU"
     " indices such as [0, 2]; got 1; for GPU 1 alone write [1]"),
    ("gpus empty", "resources:\n  gpus: []\n",
     "resources.gpus (line 4): empty list of GPUs: write `none` to run without GPUs"),
    ("gpus item", "resources:\n  gpus:\n    - 0\n    - -1\n",
     "resources.gpus[1] (line 6): expected a GPU index (an integer >= 0), got -1 (an integer)"),
    ("retry on unknown", "retry:\n  on: [timeout, ok]\n", "retry.on[1] (line 4): cannot retry on 'ok':"
     " expected one of timeout, crashed, memory, error"),
    ("retry on duplicate", "retry:\n  on: [error, error]\n", "retry.on[1] (line 4): 'error' is listed twice"),
    ("retry on not a list", "retry:\n  on: timeout\n", "retry.on (line 4): expected a list of outcomes"
     " such as [timeout, crashed], got 'timeout' (a string)"),
    ("duplicate key", "params:\n  epochs: 5\n  epochs: 6\n", "params.epochs (lines 4 and 5): duplicate key"),
    ("duplicate top key", "name: u\n", "name (lines 1 and 3): duplicate key"),
    ("bad name", "", "name (line 1): invalid name 'a b': use letters, digits, '.', '_' and '-'"),
    ("bad param name", "params: {bad-key: 1}\n",
     "params.bad-key (line 3): invalid name 'bad-key': use letters, digits and '_', not starting with a digit"),
    ("bad grid name", "search:\n  grid: {1x: [1]}\n",
     "search.grid.1x (line 4): invalid name '1x': use letters, digits and '_', not starting with a digit"),
    ("bad preload", "preload: [numpy, 3x]\n", "preload[1] (line 3): invalid module name '3x': e.g. tensorflow or a.b"),
    ("bad env name", "env: {A-B: x}\n", "env.A-B (line 3): invalid variable name 'A-B': use letters, digits, '_'"),
    ("bool env value", "env: {X: true}\n", "env.X (line 3): expected a string or a number, got true"
     " (a boolean) (ambiguous: quote it, e.g. \"1\" or \"true\")"),
    ("list env value", "env: {X: [1]}\n", "env.X (line 3): expected a string or a number, got a list"),
    ("objective without metric", "objective:\n  mode: max\n", "objective.metric (line 3): required key is missing"),
    ("objective bad mode", "objective: {metric: acc, mode: best}\n",
     "objective.mode (line 3): expected 'max' or 'min', got 'best' (a string)"),
    ("output placeholder", "output: {dir: 'runs/{nam}'}\n", "output.dir (line 3): invalid run directory"
     " 'runs/{nam}': a path in which only {name} is replaced"),
    ("workdir missing", "workdir: nope\n", "workdir (line 3): no such directory: {tmp}/nope"),
    ("workdir a file", "workdir: spec.yaml\n", "workdir (line 3): not a directory: {tmp}/spec.yaml"),
    ("merge key", "params:\n  <<: {a: 1}\n", "params (line 4): merge keys (<<) are not supported"),
    ("int key", "params:\n  1: x\n", "params (line 4): key 1 is not a string"),
    ("python tag", "params: {x: !!python/name:os.system ''}\n", "params.x (line 3): cannot read this"
     " value: could not determine a constructor for the tag 'tag:yaml.org,2002:python/name:os.system'"),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_value_is_named_with_path_and_line(tmp_path: Path, text: str, expected: str) -> None:
    head = "name: a b\nentrypoint: m:f\n" if expected.startswith("name (line 1): invalid") else HEAD
    found = problems(tmp_path, head + text)
    assert found == [expected.replace("{tmp}", str(tmp_path.resolve()))]


def test_bad_entrypoint(tmp_path: Path) -> None:
    for entry in ("digits", "digits:", ":f", "my-mod:f", "a.b:c.d e"):
        found = problems(tmp_path, f"name: t\nentrypoint: '{entry}'\n")
        assert found == [f"entrypoint (line 2): invalid entry point {entry!r}:"
                         " expected module:function, e.g. digits:train_fold"]
    assert load_spec(write(tmp_path, "name: t\nentrypoint: pkg.mod:Class.method\n")).entrypoint == (
        "pkg.mod:Class.method")


def test_name_too_long_and_missing_keys(tmp_path: Path) -> None:
    assert problems(tmp_path, f"name: {'x' * 101}\nentrypoint: m:f\n") == [
        "name (line 1): must be at most 100 characters, got '" + "x" * 101 + "'"]
    assert problems(tmp_path, "workdir: .\n") == ["name: required key is missing",
                                                  "entrypoint: required key is missing"]


def test_several_problems_in_one_error(tmp_path: Path) -> None:
    found = problems(tmp_path, """\
name: ok
entrypoint: m:f
cv:
  folds: 0
limits:
  timeout: 5 minutes
  timout: 5
resources:
  gpus: [0, x, 0]
params:
  a: 1
  a: 2
""")
    assert found == [
        "params.a (lines 11 and 12): duplicate key",
        "cv.folds (line 4): must be at least 1, got 0",
        "resources.gpus[1] (line 9): expected a GPU index (an integer >= 0), got 'x' (a string)",
        "resources.gpus[2] (line 9): 0 is listed twice",
        "limits.timeout (line 6): invalid duration '5 minutes': use e.g. 90, 90s, 15m, 2h, 1h30m",
        "limits.timout (line 7): unknown key; did you mean 'timeout'?",
    ]


# ---------------------------------------------------------------- the YAML layer
def test_billion_laughs_is_refused(tmp_path: Path) -> None:
    text = HEAD + "params:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"  {c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    found = problems(tmp_path, text)
    assert len(found) == 1 and "too many YAML aliases/nodes" in found[0]


def test_too_many_aliases_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, HEAD + "params:\n  a: &a 1\n  b: [" + ", ".join(["*a"] * 101) + "]\n")
    assert found == ["line 5: too many YAML aliases/nodes (at most 100 aliases and 100000 nodes)"]


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, HEAD + "params:\n  a: " + "[" * 40 + "]" * 40 + "\n")
    assert found == ["line 4: YAML nested deeper than 32 levels"]


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    assert problems(tmp_path, HEAD + "params:\n  a: &a [*a]\n") == ["line 4: YAML nested deeper than 32 levels"]


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, HEAD + "#" * (1 << 20) + "\n")
    assert found == [f"spec file is {len(HEAD) + (1 << 20) + 1} bytes; the limit is 1 MiB"]


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    found = problems(tmp_path, "name: t\nentrypoint: [m:f\nworkdir: .\n")
    assert len(found) == 1 and found[0].startswith("line 3, column 8: invalid YAML: while parsing a flow")


@pytest.mark.parametrize("text, expected", [
    ("- a\n- b\n", "line 1: the spec must be a mapping of keys such as name and entrypoint; got a list"),
    ("just text\n", "line 1: the spec must be a mapping of keys such as name and entrypoint;"
                    " got 'just text' (a string)"),
    ("", "the spec is empty: expected a mapping with at least name and entrypoint"),
    ("# only a comment\n", "the spec is empty: expected a mapping with at least name and entrypoint"),
    (HEAD + "---\nname: u\n", "line 3, column 1: invalid YAML: expected a single document in the stream;"
                              " but found another document"),
    (b"name: t\nentrypoint: m:\xff\n", "line 2: not UTF-8 text (byte 0xff); save the spec as UTF-8"),
], ids=["list", "scalar", "empty", "comment only", "two documents", "not utf-8"])
def test_document_level_problems(tmp_path: Path, text: str | bytes, expected: str) -> None:
    assert problems(tmp_path, text) == [expected]


def test_control_character_is_one_line(tmp_path: Path) -> None:
    found = problems(tmp_path, "name: t\x00\n")
    assert len(found) == 1 and "\n" not in found[0] and "unacceptable character #x0000" in found[0]


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    assert load_spec(write(tmp_path, "\ufeff" + HEAD)).name == "t"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.problems == [f"no such file: {path}"] and info.value.source == str(path)


def test_source_type_error() -> None:
    with pytest.raises(TypeError):
        load_spec(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------- overrides
def test_overrides_are_typed_by_the_schema(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, EXAMPLE), [
        "limits.timeout=10m", "cv.folds=3", "search.grid.lr=[0.1,0.2]", "resources.gpus=[0,2]",
        "retry.on=[error]", "params.epochs=7", "limits.max_rss=4GiB", "objective.mode=min",
        "env.X=1", "name=other"])
    assert spec.limits.timeout == 600.0 and spec.cv.folds == 3
    assert spec.search is not None and spec.search.grid == {"lr": [0.1, 0.2], "units": [32, 64]}
    assert spec.resources.gpus == [0, 2] and spec.retry.on == ["error"]
    assert spec.params == {"epochs": 7} and spec.limits.max_rss == 4 << 30
    assert spec.objective == ObjectiveSpec(metric="val_accuracy", mode="min")
    assert spec.env == {"TF_CPP_MIN_LOG_LEVEL": "2", "X": "1"} and spec.name == "other"


def test_overrides_create_sections(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, HEAD + "search:\n"), ["search.grid.lr=[1, 2]", "limits.stall=1m",
                                                           "limits.max_rss="])
    assert spec.search == SearchSpec(grid={"lr": [1, 2]})
    assert spec.limits.stall == 60.0 and spec.limits.max_rss is None


def test_mapping_overrides(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, HEAD), {"limits.timeout": 600, "cv.folds": 2,
                                             "resources.gpus": [1], "params": {"a": 1}})
    assert (spec.limits.timeout, spec.cv.folds, spec.resources.gpus, spec.params) == (600.0, 2, [1], {"a": 1})


def test_override_errors_name_the_override(tmp_path: Path) -> None:
    found = problems(tmp_path, HEAD, ["limits.timeout=abc", "limits.timout=5", "cv.folds='3'",
                                      "resources.gpus=[0,0]", "objective.mode=min"])
    assert found == [
        "cv.folds (from -o cv.folds='3'): expected an integer, got '3' (a string)",
        "objective.metric (from -o objective.mode=min): required key is missing",
        "resources.gpus[1] (from -o resources.gpus=[0,0]): 0 is listed twice",
        "limits.timeout (from -o limits.timeout=abc): invalid duration 'abc': use e.g. 90, 90s, 15m, 2h, 1h30m",
        "limits.timout (from -o limits.timout=5): unknown key; did you mean 'timeout'?",
    ]


def test_mapping_override_error_names_the_override(tmp_path: Path) -> None:
    assert problems(tmp_path, HEAD, {"limits.grace": "soon"}) == [
        "limits.grace (from override limits.grace='soon'): invalid duration 'soon':"
        " use e.g. 90, 90s, 15m, 2h, 1h30m"]


def test_unknown_override_section(tmp_path: Path) -> None:
    assert problems(tmp_path, HEAD, ["limts.timeout=5m"]) == [
        "limts (from -o limts.timeout=5m): unknown key; did you mean 'limits'?"]


@pytest.mark.parametrize("override", ["x", "=5", "a..b=1", "", "cv.=3"])
def test_bad_override_format(tmp_path: Path, override: str) -> None:
    assert problems(tmp_path, HEAD, [override]) == [
        f"override {override!r}: expected KEY=VALUE, e.g. limits.timeout=10m"]


def test_override_into_a_scalar_and_bad_yaml(tmp_path: Path) -> None:
    assert problems(tmp_path, HEAD, ["name.x=1", "cv.folds=[1"]) == [
        "override 'cv.folds=[1': line 1, column 3: invalid YAML: while parsing a flow sequence;"
        " expected ',' or ']', but got '<stream end>'",
        "-o name.x=1: name is not a mapping"]


def test_override_of_a_spec(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, EXAMPLE))
    assert load_spec(spec) is spec
    changed = load_spec(spec, ["cv.folds=2"])
    assert changed.cv.folds == 2 and spec.cv.folds == 5
    assert changed.source == spec.source and changed.workdir == spec.workdir


def test_override_line_is_not_reported_for_file_value(tmp_path: Path) -> None:
    found = problems(tmp_path, HEAD + "limits:\n  timeout: 5m\n", ["limits.timeout=-3"])
    assert found == ["limits.timeout (from -o limits.timeout=-3): invalid duration -3: must be more than 0"
                     " (use e.g. 90, 90s, 15m, 2h, 1h30m)"]


# ---------------------------------------------------------------- dict source and round trips
def test_dict_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "code").mkdir()
    raw = {"name": "d", "entrypoint": "m:f", "workdir": "code", "retry": {"on": ("timeout",)},
           "limits": {"timeout": 90}}
    spec = load_spec(raw, base_dir=tmp_path)
    assert spec.workdir == (tmp_path / "code").resolve() and spec.source is None
    assert spec.retry.on == ["timeout"] and spec.limits.timeout == 90.0
    assert raw["workdir"] == "code" and raw["limits"] == {"timeout": 90}  # not mutated
    monkeypatch.chdir(tmp_path)
    assert load_spec({"name": "d", "entrypoint": "m:f"}).workdir == tmp_path.resolve()


def test_dict_source_errors_have_paths_but_no_lines() -> None:
    with pytest.raises(SpecError) as info:
        load_spec({"name": "d", "entrypoint": "m:f", "limits": {"timeout": "x"}, "retry": {True: 1},
                   "params": {5: 1}})
    assert info.value.source is None
    assert info.value.problems == [
        "params: key 5 is not a string",
        "limits.timeout: invalid duration 'x': use e.g. 90, 90s, 15m, 2h, 1h30m",
        "retry: key true is not a string (read by a YAML 1.1 loader, which turns on/yes/no into booleans?)"]


@pytest.mark.parametrize("text", [EXAMPLE, RANDOM_EXAMPLE, HEAD + """\
params: {s1: '1e5', s2: '0o17', s3: 'yes', s4: '1:30', s5: '0755', f: 1.0e+20, n: null, l: [a, {b: c}]}
limits: {timeout: 1.5, grace: 250ms, stall: 3961, max_rss: 1.5GB}
resources: {gpus: none, workers: 4}
retry: {on: [], backoff: 0}
search: {random: {samples: 3, seed: 7, space: {x: {choice: [a, 'no', 1]}}}}
"""], ids=["grid", "random", "odd values"])
def test_round_trip(tmp_path: Path, text: str) -> None:
    spec = load_spec(write(tmp_path, text))
    data = spec.to_dict()
    assert load_spec(data) == spec
    again = load_spec(write(tmp_path, spec.to_yaml(), "again.yaml"))
    assert again == spec and again.source != spec.source
    assert isinstance(data["workdir"], str) and data["limits"]["timeout"] == format_duration(spec.limits.timeout)


def test_to_dict_is_plain(tmp_path: Path) -> None:
    data = load_spec(write(tmp_path, EXAMPLE)).to_dict()
    assert data["limits"] == {"timeout": "30m", "grace": "10s", "max_rss": None, "max_gpu_memory": None,
                              "exit_timeout": "30s", "stall": None}
    assert data["resources"]["min_free_memory"] == 1073741824 and data["retry"]["backoff"] == "5s"
    assert data["search"] == {"grid": {"lr": [0.001, 0.01], "units": [32, 64]}}
    assert data["workdir"] == str(tmp_path.resolve()) and list(data)[:2] == ["name", "entrypoint"]


def test_spec_is_frozen(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, HEAD))
    with pytest.raises(Exception):
        spec.name = "x"
    assert isinstance(spec, Spec)


# ---------------------------------------------------------------- durations and sizes
@pytest.mark.parametrize("value, seconds", [
    (90, 90.0), (1.5, 1.5), ("90", 90.0), (" 45 ", 45.0), ("90s", 90.0), ("1.5s", 1.5), ("15m", 900.0),
    ("2h", 7200.0), ("1h30m", 5400.0), ("1h 30m", 5400.0), ("1d", 86400.0), ("250ms", 0.25),
    ("1d2h3m4s", 93784.0), ("1.5h", 5400.0), ("15M", 900.0), ("1e-3", 0.001), ("2m500ms", 120.5),
])
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", [
    True, False, None, -1, 0, 0.0, "0s", "", "  ", "5 minutes", "-1s", "abc", "1:30", "30m1h", "1h1h",
    "inf", "nan", float("nan"), float("inf"), [1], "1.5.5s", "s", "5 s x", "10 mins",
])
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(ValueError, match=r"^invalid duration .*(use e\.g\. 90, 90s, 15m, 2h, 1h30m|more than 0)"):
        parse_duration(value)


def test_parse_duration_allow_zero() -> None:
    assert parse_duration(0, allow_zero=True) == 0.0 and parse_duration("0s", allow_zero=True) == 0.0
    with pytest.raises(ValueError, match="must be 0 or more"):
        parse_duration(-0.5, allow_zero=True)


@pytest.mark.parametrize("seconds, text", [
    (1800, "30m"), (1800.0, "30m"), (5400, "1h30m"), (90061, "1d1h1m1s"), (1.5, "1.5s"), (0.25, "0.25s"),
    (0, "0s"), (10, "10s"), (7200, "2h"), (1e-05, "1e-05"), (3661.5, "3661.5s"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text, allow_zero=True) == seconds


@pytest.mark.parametrize("seconds", [0.1, 1 / 3, 3960.0000000000005, 86400 * 400, 123456.789, 2.5e-07])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("value", [-1, float("inf"), True])
def test_format_duration_refuses(value: float) -> None:
    with pytest.raises(ValueError):
        format_duration(value)


@pytest.mark.parametrize("value, size", [
    (1024, 1024), ("123", 123), ("64B", 64), ("4KiB", 4096), ("1.5KiB", 1536), ("512MiB", 536870912),
    ("2GiB", 2147483648), ("2gib", 2147483648), ("10 MiB", 10485760), ("1.5GB", 1500000000),
    ("100MB", 100000000), ("1kb", 1000), ("1TB", 10**12), ("1TiB", 2**40), (1e9, 10**9),
])
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size and isinstance(parse_size(value), int)


@pytest.mark.parametrize("value, message", [
    ("512M", "'M' is ambiguous; write 512MiB (1024-based) or 512MB (1000-based)"),
    ("2g", "'g' is ambiguous; write 2GiB (1024-based) or 2GB (1000-based)"),
    (True, "invalid size true"), (None, "invalid size null"), (-1, "must be more than 0 bytes"),
    (0, "must be more than 0 bytes"), ("1.5B", "not a whole number of bytes"), (1.5, "not a whole number"),
    ("lots", "invalid size 'lots': use e.g."), ("", "invalid size ''"), ("1XB", "invalid size '1XB'"),
    ("-1GiB", "invalid size '-1GiB'"), (float("inf"), "invalid size inf"), ([1], "invalid size a list"),
])
def test_parse_size_refuses(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_size(value)


def test_parse_size_allow_zero() -> None:
    assert parse_size(0, allow_zero=True) == 0 and parse_size("0MiB", allow_zero=True) == 0
