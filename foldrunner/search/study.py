"""The study of an adaptive search: ``RUN_DIR/optuna.sqlite``, named after the spec.

``optuna.load_study(study_name=NAME, storage="sqlite:///RUN_DIR/optuna.sqlite")`` and
``optuna-dashboard sqlite:///RUN_DIR/optuna.sqlite`` show it. Each trial's value is its
objective's mean over all of its folds; its user attributes carry ``fold_ids`` and
``fold_scores`` (fold id -> objective); its intermediate values are its fold scores by
step (launch order: replicate-major, then fold).

The journal is the record; the study follows it. Every write goes journal-last when it
creates (the study asks a trial, then the journal takes it) and journal-first when it
ends (the journal says how the trial ended, then the study is told), so after a crash
at any moment the study holds at most one trial the journal lacks (asked, not yet
journaled: a resume adopts it) and the journal's ended trials may still run in the
study (a resume tells them). :func:`foldrunner.search.source.TrialSource.open` does both.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foldrunner.config.plan import Adaptive
from foldrunner.config.spec import OptunaSearch, Spec
from foldrunner.errors import RunDirError, UsageError

if TYPE_CHECKING:
    import optuna

STUDY_FILE = "optuna.sqlite"
SQLITE_TIMEOUT = 30.0
"""Seconds a write to the study waits for a reader (the dashboard) to let go."""


def require_optuna(spec: Spec) -> None:
    """A UsageError naming the key when ``spec`` needs a package that is not installed."""
    opt = spec.search.optuna if spec.search is not None else None
    if opt is None:
        return
    if importlib.util.find_spec("optuna") is None:
        raise UsageError("search.optuna: Optuna is not installed: pip install 'foldrunner[optuna]'")
    if opt.sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise UsageError("search.optuna.sampler: cmaes needs the cmaes package:"
                         " pip install 'foldrunner[optuna]' (or pip install cmaes)")


def study_path(run_dir: Path) -> Path:
    return run_dir / STUDY_FILE


def storage_url(run_dir: Path) -> str:
    return f"sqlite:///{study_path(run_dir).absolute()}"


def make_sampler(opt: OptunaSearch, asked: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded. TPE lies constantly about trials in flight (each is
    taken as the worst value so far), so trials asked together do not all land on the
    same point.

    ``asked``: trials the study already has (a resume). TPE's and the random sampler's
    draws come from their own generator, which a new process starts afresh: seeded as the
    first run's, it would ask the first run's points again. Their seed moves on by the
    trials already asked (still the same for the same history). CMA-ES keeps its state in
    the study, and QMC its place in the sequence: their seed stays the spec's."""
    import optuna

    moved = (opt.seed + asked) % 2**32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if opt.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=moved, constant_liar=True)
        if opt.sampler == "random":
            return optuna.samplers.RandomSampler(seed=moved)
        if opt.sampler == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=opt.seed, warn_independent_sampling=False)
        return optuna.samplers.QMCSampler(seed=opt.seed, warn_independent_sampling=False)


def make_pruner(opt: OptunaSearch) -> optuna.pruners.BasePruner:
    """Optuna's pruner for the study: ``WilcoxonPruner`` with ``pruner: wilcoxon`` (fold
    scores paired by step); otherwise none: the fold-aware median is foldrunner's own
    (:mod:`foldrunner.search.pruner`), told to Optuna as each trial's state."""
    import optuna

    if opt.pruner is not None and opt.pruner.wilcoxon is not None:
        import scipy.stats  # noqa: F401  - now: its first test would import it (~1 s) mid-run
        w = opt.pruner.wilcoxon
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.WilcoxonPruner(p_threshold=w.p_threshold,
                                                 n_startup_steps=w.warmup_folds)
    return optuna.pruners.NopPruner()


def open_study(spec: Spec, run_dir: Path, resume: bool) -> optuna.Study:
    """The study of ``spec`` in ``run_dir``: created for a new run, loaded for a resume.

    A new run refuses a run dir that already holds a study file (its trials would be
    taken for this run's); the file is never opened through a symlink.
    """
    import optuna
    from optuna.storages import RDBStorage

    opt = spec.search.optuna if spec.search is not None else None
    assert opt is not None and spec.objective is not None
    path = study_path(run_dir)
    if path.is_symlink():
        raise RunDirError(f"{path} is a symlink: foldrunner writes no file of the run dir through one")
    if path.exists() and not resume:
        raise RunDirError(f"run directory {run_dir} already holds a study ({STUDY_FILE}) but no"
                          " journal: remove it, or choose another --run-dir")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").propagate = False
    storage = RDBStorage(storage_url(run_dir),
                         engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT}})
    study = optuna.create_study(
        storage=storage, sampler=make_sampler(opt), pruner=make_pruner(opt),
        study_name=spec.name, load_if_exists=True,
        direction="maximize" if spec.objective.mode == "max" else "minimize")
    asked = len(study.get_trials(deepcopy=False))
    if asked:
        study.sampler = make_sampler(opt, asked)
    try:
        path.chmod(0o600)
    except OSError:
        pass
    return study


def trial_object(study: optuna.Study, number: int) -> optuna.trial.Trial:
    """A live handle on the study's trial ``number`` (running), e.g. after a resume."""
    import optuna

    frozen = study.get_trials(deepcopy=False)[number]
    return optuna.trial.Trial(study, frozen._trial_id)


def set_attrs(trial: optuna.trial.Trial, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def describe_search(spec: Spec, adaptive: Adaptive) -> tuple[str, list[dict[str, Any]]]:
    """What ``foldrunner plan`` says of an adaptive search: one line, and its space (one row
    per parameter)."""
    opt = spec.search.optuna if spec.search is not None else None
    assert opt is not None and spec.objective is not None
    pruner = "no pruner"
    if opt.pruner is not None:
        settings = opt.pruner.settings.model_dump()
        pruner = f"{opt.pruner.kind} pruner ({', '.join(f'{k}={v}' for k, v in settings.items())})"
    cap = "" if opt.concurrent_trials is None else f", at most {opt.concurrent_trials} in flight"
    head = (f"{spec.name}: adaptive search (optuna, {opt.sampler} sampler, seed {opt.seed}, "
            f"{pruner}{cap}), {spec.objective.mode} {spec.objective.metric}: at most "
            f"{adaptive.trials} trial(s) x {adaptive.replicates} replicate(s) x {adaptive.folds} "
            f"fold(s) = {adaptive.max_folds} folds; each trial's parameters are asked of the "
            f"study as a slot comes free")
    rows = [{"param": name, "distribution": kind, "values": args}
            for name, dist in opt.space.items() for kind, args in dist.items()]
    rows += [{"param": name, "distribution": "fixed", "values": value}
             for name, value in spec.params.items() if name not in opt.space]
    return head, rows
