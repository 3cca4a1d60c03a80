"""Command line: `scaletui` (the app), `run`, `ls`, `fit`, `suggest`.

The CLI parses and displays; it never trains or speaks SQL itself. One module per command group
(`run`, `ls`, `fit`, `suggest`), shared helpers and exit codes in `common`, the group in `main`.
"""

from scaletui.cli.main import main

__all__ = ["main"]
