"""``python -m foldrunner``: the same program as the ``foldrunner`` command."""

from .cli import main

if __name__ == "__main__":
    main()
