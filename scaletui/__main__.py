"""`python -m scaletui` is the `scaletui` command."""

from scaletui.cli import main

if __name__ == "__main__":
    main()
