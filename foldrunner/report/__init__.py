"""The HTML report of a run: ``foldrunner report``, ``foldrunner run --report``."""
