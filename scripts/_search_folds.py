"""The folds of scripts/bench_search.py: an SVC and a Keras MLP on scikit-learn's digits.

Each returns its score and ``fit_s``, the CPU seconds of its own work (fit and score,
``time.process_time``: on a shared machine, wall-clock seconds would measure the neighbours),
which the bench adds up as fold-seconds.
"""

import time

import numpy as np
from sklearn.datasets import load_digits


def _data():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


def svc(ctx):
    from sklearn.svm import SVC

    X, y = _data()
    train, val = ctx.split(X, y, kind="stratified")
    t0 = time.process_time()
    model = SVC(C=ctx.params["C"], gamma=ctx.params["gamma"]).fit(X[train], y[train])
    acc = float(model.score(X[val], y[val]))
    return {"val_accuracy": acc, "fit_s": time.process_time() - t0}


def mlp(ctx):
    import keras

    X, y = _data()
    train, val = ctx.split(X, y, kind="stratified")
    keras.utils.set_random_seed(ctx.seed + ctx.fold)
    t0 = time.process_time()
    p = ctx.params
    model = keras.Sequential([keras.Input((X.shape[1],)),
                              keras.layers.Dense(p["units"], activation="relu"),
                              keras.layers.Dropout(p["dropout"]),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(keras.optimizers.Adam(p["lr"]), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(X[train], y[train], epochs=p["epochs"], batch_size=64, verbose=0)
    _, acc = model.evaluate(X[val], y[val], verbose=0)
    return {"val_accuracy": float(acc), "fit_s": time.process_time() - t0}
