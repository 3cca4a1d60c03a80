"""scaletui: a terminal workbench for scaling-law experiments."""

__version__ = "0.1.0"
