"""The Textual app: a live view of a scaletui database (the only part of scaletui that imports textual).

`scaletui.tui.app.ScaleApp` is the entry point; it composes the regions in `widgets/` and routes keys.
`poller`, `state`, `view` and `model` hold everything that can be tested without a terminal.
"""
