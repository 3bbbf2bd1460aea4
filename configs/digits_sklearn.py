"""Cross-validated logistic regression on scikit-learn's bundled digits (no download).

For users of frameworks other than Keras: nothing here imports TensorFlow.
"""

from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def train_fold(ctx):
    X, y = load_digits(return_X_y=True)
    train, val = ctx.split(X, y, kind="stratified")
    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=ctx.params["C"], max_iter=ctx.params["max_iter"]),
    )
    model.fit(X[train], y[train])
    proba = model.predict_proba(X[val])
    return {
        "val_accuracy": float(accuracy_score(y[val], proba.argmax(axis=1))),
        "val_loss": float(log_loss(y[val], proba, labels=list(range(10)))),
        "n_train": int(len(train)),
    }
