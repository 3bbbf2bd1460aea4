"""``python -m foldrunner``: the same program as the ``foldrunner`` command."""

from foldrunner.ui.cli import main

if __name__ == "__main__":
    main()
