"""``python -m advrun`` is the ``advrun`` command."""

from advrun.cli import main

if __name__ == "__main__":
    main()
