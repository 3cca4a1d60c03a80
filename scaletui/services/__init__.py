"""Services: "database plus analysis" and "sweep plus workers" glue, between the base packages and the
front ends.

`runner` (a sweep on worker processes), `monitor` (live alerts while a sweep trains), `tracker` (the one
incremental reader of a database, used by the app and the monitor), `fitting` (sweeps and CSV files to
fitted laws), `suggest` (the configurator against a database) and `plotting` (figures). They import the
vocabulary, the store, the analysis and, only inside worker processes, the engine; never textual.
"""
