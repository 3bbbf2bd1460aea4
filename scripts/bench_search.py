"""Adaptive search with fold-level pruning against random search and scikit-learn's own.

Two real tasks that ship with their packages: scikit-learn's digits with an SVC over
``C`` and ``gamma`` (5 folds), and the Keras digits MLP over ``lr``, ``units`` and
``dropout`` (5 folds). For each seed, side by side at the same trial budget:

- ``random``: foldrunner, ``search.optuna`` with the random sampler, no pruning
- ``tpe``: foldrunner, TPE, no pruning
- ``tpe+prune``: foldrunner, TPE with a fold-aware pruner (by default ``percentile`` keeping
  the best quarter at each fold, after 3 trials; ``--pruner '{"median": {}}'`` for another)
- ``halving``: scikit-learn's ``HalvingRandomSearchCV`` (SVC only: it needs an estimator)
- ``optunacv``: Optuna's ``OptunaSearchCV`` (SVC only, likewise)

It prints the best mean CV score each reached and the fold-seconds it spent: the CPU
seconds of the folds' own work (fit and score, ``time.process_time`` in each fold; for
foldrunner a pruned fold ended mid-way counts the mean CPU seconds of its trial's finished folds; for scikit-learn's
searches the CPU seconds of ``fit`` without the final refit). For
the foldrunner searches it also prints the fold-seconds spent until a complete trial
first reached random search's best (``to-random-best``).

Goal: TPE with fold-level pruning reaches random search's best with at most half its
fold-seconds, on average over the seeds.

    .venv/bin/python scripts/bench_search.py            # the SVC, 40 trials, 5 seeds: ~5 min on 2 cores
    .venv/bin/python scripts/bench_search.py --keras    # and the Keras MLP, 5 seeds (much longer:
                                                        # each fold is a fresh TensorFlow process)
    .venv/bin/python scripts/bench_search.py --keras-only --epochs 3  # the MLP, 40 trials: ~40 min
    .venv/bin/python scripts/bench_search.py --seeds 10 --svc-trials 40 --keras --mlp-trials 20 --workers 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import foldrunner  # noqa: E402
from foldrunner.orchestrate.api import RunOptions  # noqa: E402

SVC_SPACE = {"C": {"loguniform": [1.0e-2, 1.0e3]}, "gamma": {"loguniform": [1.0e-4, 1.0e1]}}
MLP_SPACE = {"lr": {"loguniform": [1.0e-4, 3.0e-1]}, "units": {"choice": [8, 16, 32, 64, 128]},
             "dropout": {"uniform": [0.0, 0.6]}}
PRUNER: dict[str, Any] = {"percentile": {"percentile": 25, "warmup_folds": 0, "min_trials": 3}}
"""The pruner of the ``tpe+prune`` row (``--pruner`` sets another)."""
FOLDRUNNER = {"random": ("random", "none"), "tpe": ("tpe", "none"), "tpe+prune": ("tpe", PRUNER)}


def spec(task: str, strategy: str, seed: int, trials: int, folds: int, workers: int,
         epochs: int) -> dict[str, Any]:
    sampler, pruner = FOLDRUNNER[strategy]
    keras = task == "mlp"
    return {
        "name": f"bench-{task}-{strategy.replace('+', '-')}-s{seed}",
        "entrypoint": f"_search_folds:{task}",
        "workdir": str(HERE),
        "preload": ["tensorflow", "keras", "sklearn.datasets"] if keras else ["sklearn.svm", "sklearn.datasets"],
        "params": {"epochs": epochs} if keras else {},
        "search": {"optuna": {"trials": trials, "sampler": sampler, "seed": seed,
                              "space": MLP_SPACE if keras else SVC_SPACE, "pruner": pruner}},
        "cv": {"folds": folds, "seed": seed},
        "objective": {"metric": "val_accuracy", "mode": "max"},
        "resources": {"gpus": "none", "workers": workers, "zygote": True},  # forks from a preloaded zygote
        "limits": {"timeout": "10m", "grace": "5s"},
        "retry": {"attempts": 1},
        "env": {"TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
                "TF_NUM_INTEROP_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
    }


def run_foldrunner(s: dict[str, Any], root: Path) -> tuple[pd.DataFrame, float]:
    t0 = time.perf_counter()
    df = foldrunner.run(s, run_dir=root / s["name"], options=RunOptions(handle_signals=False))
    return df, time.perf_counter() - t0


def fold_seconds(df: pd.DataFrame) -> pd.Series:
    """Each launched fold's own CPU seconds: its ``fit_s``; a fold ended before it returned
    (pruned mid-way) is charged the mean ``fit_s`` of its trial's finished folds (the same
    parameters on the same amount of data: an upper bound, as it was stopped before its end),
    or its whole process time when none finished."""
    launched = df[df["attempts"] > 0]
    own = launched["metric_fit_s"] if "metric_fit_s" in launched else pd.Series(np.nan, index=launched.index)
    by_trial = launched.groupby("trial")["metric_fit_s"].transform("mean") if "metric_fit_s" in launched else own
    return own.fillna(by_trial).fillna(launched["duration_s"])


def summarize_run(df: pd.DataFrame, folds: int) -> dict[str, Any]:
    secs = fold_seconds(df)
    ok = df[df["status"] == "ok"]
    complete = ok.groupby("trial").filter(lambda g: len(g) == folds)
    means = complete.groupby("trial")["metric_val_accuracy"].mean()
    return {"best": float(means.max()) if len(means) else float("nan"), "fold_s": float(secs.sum()),
            "folds": int(len(secs)), "pruned": int(df.loc[df["status"] == "pruned", "trial"].nunique())}


def seconds_to_reach(df: pd.DataFrame, folds: int, target: float) -> float | None:
    """Fold-seconds spent (folds in the order they ended) until a complete trial's mean
    first reached ``target``; None when none did."""
    launched = df[df["attempts"] > 0].assign(secs=fold_seconds(df)).sort_values("ended_at")
    done: dict[int, list[float]] = {}
    spent = 0.0
    for _, row in launched.iterrows():
        spent += float(row["secs"])
        if row["status"] != "ok":
            continue
        scores = done.setdefault(int(row["trial"]), [])
        scores.append(float(row["metric_val_accuracy"]))
        if len(scores) == folds and statistics.fmean(scores) >= target - 1e-12:
            return spent
    return None


def sklearn_baselines(seed: int, trials: int, folds: int) -> dict[str, dict[str, Any]]:
    """HalvingRandomSearchCV and OptunaSearchCV over the SVC's space, same budget."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna_integration import OptunaSearchCV
    from scipy.stats import loguniform
    from sklearn.datasets import load_digits
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingRandomSearchCV, StratifiedKFold
    from sklearn.svm import SVC

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    out = {}
    t0 = time.process_time()
    halving = HalvingRandomSearchCV(
        SVC(), {"C": loguniform(1e-2, 1e3), "gamma": loguniform(1e-4, 1e1)}, n_candidates=trials,
        cv=cv, factor=3, random_state=seed, n_jobs=1, refit=False).fit(X, y)
    secs = time.process_time() - t0
    out["halving"] = {"best": float(halving.best_score_), "fold_s": secs,
                      "folds": len(halving.cv_results_["mean_fit_time"]) * folds}
    t0 = time.process_time()
    search = OptunaSearchCV(
        SVC(), {"C": FloatDistribution(1e-2, 1e3, log=True), "gamma": FloatDistribution(1e-4, 1e1, log=True)},
        cv=cv, n_trials=trials, random_state=seed, n_jobs=1, verbose=0, refit=False).fit(X, y)
    out["optunacv"] = {"best": float(search.best_score_), "fold_s": time.process_time() - t0,
                       "folds": trials * folds}
    return out


def bench_task(task: str, args: argparse.Namespace, root: Path) -> pd.DataFrame:
    trials = args.svc_trials if task == "svc" else args.mlp_trials
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        got: dict[str, dict[str, Any]] = {}
        frames = {}
        for strategy in args.strategies:
            df, wall = run_foldrunner(spec(task, strategy, seed, trials, args.folds, args.workers,
                                           args.epochs), root)
            frames[strategy] = df
            got[strategy] = {**summarize_run(df, args.folds), "wall_s": wall}
        for strategy, df in frames.items():
            got[strategy]["to_random_best"] = seconds_to_reach(df, args.folds, got["random"]["best"])
        if task == "svc" and not args.foldrunner_only:
            t0 = time.perf_counter()
            for name, res in sklearn_baselines(seed, trials, args.folds).items():
                got[name] = {**res, "wall_s": time.perf_counter() - t0, "pruned": None, "to_random_best": None}
        for strategy, res in got.items():
            rows.append({"task": task, "seed": seed, "strategy": strategy, **res})
            print(f"  {task} seed {seed} {strategy:>10}: best {res['best']:.4f}  fold-s {res['fold_s']:7.1f}"
                  f"  folds {res['folds']:4d}", flush=True)
    return pd.DataFrame(rows)


def report(df: pd.DataFrame) -> str:
    lines = []
    for task, g in df.groupby("task", sort=False):
        random = g[g["strategy"] == "random"].set_index("seed")
        lines.append(f"\n{task}: {g['seed'].nunique()} seeds, mean over seeds")
        lines.append(f"  {'strategy':>10}  {'best':>7}  {'fold-s':>8}  {'x random':>8}  {'folds':>6}"
                     f"  {'to-random-best':>14}  {'reached':>7}")
        for strategy, s in g.groupby("strategy", sort=False):
            s = s.set_index("seed")
            ratio = (s["fold_s"] / random["fold_s"]).mean()
            reach = s["to_random_best"].dropna() if strategy in FOLDRUNNER else pd.Series(dtype=float)
            hit = f"{len(reach)}/{len(s)}" if strategy in FOLDRUNNER else "-"
            to_best = "-" if not len(reach) else f"{(reach / random.loc[reach.index, 'fold_s']).mean():.2f}x"
            lines.append(f"  {strategy:>10}  {s['best'].mean():7.4f}  {s['fold_s'].mean():8.1f}  {ratio:7.2f}x"
                         f"  {s['folds'].mean():6.1f}  {to_best:>14}  {hit:>7}")
        p = g[g["strategy"] == "tpe+prune"].set_index("seed")
        if not len(p):
            continue
        reached = (p["best"] >= random["best"] - 1e-12)
        ratio = (p["fold_s"] / random["fold_s"]).mean()
        to_best = (p["to_random_best"] / random["fold_s"]).dropna()
        lines.append(f"  goal (tpe+prune reaches random's best with <= 0.5x its fold-seconds): best >= random's "
                     f"in {int(reached.sum())}/{len(p)} seeds; mean best {p['best'].mean():.4f} vs "
                     f"{random['best'].mean():.4f}; fold-seconds {ratio:.2f}x of random's in all"
                     + (f", {to_best.mean():.2f}x until it first reached random's best ({len(to_best)} seeds)"
                        if len(to_best) else ""))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed, first-seed+1, ...")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--svc-trials", type=int, default=40)
    ap.add_argument("--mlp-trials", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=4, help="epochs of the Keras MLP")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keras", action="store_true", help="the Keras MLP too (a fresh TensorFlow"
                    " process per fold: on 2 cores, several minutes per seed)")
    ap.add_argument("--keras-only", action="store_true", help="the Keras MLP alone")
    ap.add_argument("--keep", type=Path, help="keep the run dirs here (default: a temporary dir)")
    ap.add_argument("--strategies", type=lambda v: v.split(","), default=list(FOLDRUNNER),
                    help="the foldrunner rows to run, comma-separated (random is needed: the"
                         f" others are measured against it; default: {','.join(FOLDRUNNER)})")
    ap.add_argument("--foldrunner-only", action="store_true",
                    help="skip scikit-learn's HalvingRandomSearchCV and OptunaSearchCV rows")
    ap.add_argument("--pruner", type=json.loads, default=PRUNER,
                    help=f"the tpe+prune row's search.optuna.pruner, as JSON (default: {json.dumps(PRUNER)})")
    args = ap.parse_args()
    FOLDRUNNER["tpe+prune"] = ("tpe", args.pruner)
    if "random" not in args.strategies or not set(args.strategies) <= set(FOLDRUNNER):
        ap.error(f"--strategies: random and some of {', '.join(FOLDRUNNER)}")
    print(f"tpe+prune: pruner {json.dumps(args.pruner)}", flush=True)
    warnings.simplefilter("ignore", FutureWarning)  # optuna_integration imports a deprecated module
    warnings.filterwarnings("ignore", message="OptunaSearchCV is experimental")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        root = args.keep or Path(tmp)
        frames = [] if args.keras_only else [bench_task("svc", args, root)]
        if args.keras or args.keras_only:
            frames.append(bench_task("mlp", args, root))
    df = pd.concat(frames, ignore_index=True)
    print(report(df))
    print(f"\n{time.perf_counter() - t0:.0f}s in all; workers {args.workers}; fold-seconds = the CPU seconds"
          " of the folds' own fit and score")


if __name__ == "__main__":
    main()
