"""Keras helpers for a fold's code: ``from foldrunner import keras as fk``.

The public name of :mod:`foldrunner.child.keras` (it runs inside a fold's process).
"""

from foldrunner.child.keras import *  # noqa: F401,F403
from foldrunner.child.keras import __all__  # noqa: F401
