"""A real Keras cross-validation: a small MLP on scikit-learn's bundled digits (no download).

Each fold runs in a fresh process: TensorFlow's memory goes back to the system when the
fold ends, whatever Keras or TensorFlow kept.
"""

import numpy as np
from sklearn.datasets import load_digits

from foldrunner import keras as fk


def build(params, n_features, n_classes):
    import keras

    model = keras.Sequential([keras.Input((n_features,))])
    for _ in range(params["layers"]):
        model.add(keras.layers.Dense(params["units"], activation="relu"))
        if params["dropout"]:
            model.add(keras.layers.Dropout(params["dropout"]))
    model.add(keras.layers.Dense(n_classes, activation="softmax"))
    model.compile(
        optimizer=keras.optimizers.Adam(params["lr"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def train_fold(ctx):
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    train, val = ctx.split(X, y, kind="stratified")
    with fk.fold_session(ctx) as report:
        model = build(ctx.params, X.shape[1], 10)
        history = model.fit(
            X[train], y[train],
            validation_data=(X[val], y[val]),
            epochs=ctx.params["epochs"], batch_size=ctx.params["batch_size"],
            callbacks=[report], verbose=0,
        )
        loss, acc = model.evaluate(X[val], y[val], verbose=0)
    return {
        "val_accuracy": float(acc),
        "val_loss": float(loss),
        "best_epoch": int(np.argmax(history.history["val_accuracy"]) + 1),
    }
