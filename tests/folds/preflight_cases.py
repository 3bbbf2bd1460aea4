"""Entry points for preflight tests."""

not_callable = 42


def fine(ctx):
    return {"acc": 1.0}
