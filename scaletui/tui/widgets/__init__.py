"""The app's panes. Each widget has a `show(...)`/`sync(...)` that redraws from the view state."""
