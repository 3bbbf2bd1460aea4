"""A fold that imports TensorFlow (at import time, as real folds do) and records when
its entry point's first line ran."""

import time

import tensorflow as tf  # noqa: F401  - the cost being measured


def fold(ctx):
    first_line = time.time()
    time.sleep(ctx.params.get("work", 0.0))  # stands for the training
    return {"first_line": first_line}
