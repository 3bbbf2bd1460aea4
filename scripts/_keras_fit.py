"""One compile-and-fit of a small Keras MLP on digits: the unit of work of bench_memory."""

import time

import numpy as np
from sklearn.datasets import load_digits


def data():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


def fit_once(X, y, seed: int, epochs: int = 2) -> float:
    import keras

    keras.utils.set_random_seed(seed)
    t0 = time.perf_counter()
    model = keras.Sequential([
        keras.Input((X.shape[1],)),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(X, y, epochs=epochs, batch_size=64, verbose=0)
    model.evaluate(X, y, verbose=0)
    return time.perf_counter() - t0


def fold(ctx):
    X, y = data()
    seconds = fit_once(X, y, ctx.fold)
    return {"fit_s": seconds}


def fold_metrics(ctx):
    """For the zygote soak: the model's evaluation, which must not depend on how the
    process was made (same seed, one thread: bit-identical across start methods)."""
    import keras

    X, y = data()
    keras.utils.set_random_seed(ctx.fold)
    model = keras.Sequential([
        keras.Input((X.shape[1],)),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(X, y, epochs=1, batch_size=64, verbose=0)
    loss, acc = model.evaluate(X, y, verbose=0)
    return {"loss": float(loss), "acc": float(acc), "pid": __import__("os").getpid()}
