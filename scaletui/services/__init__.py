"""Services: "database plus analysis" and "sweep plus workers" glue, between the base packages and the
front ends.

`runner` (a sweep on worker processes, its tasks started in `schedule`'s order), `monitor` (live alerts
while a sweep trains), `tracker` (the one incremental reader of a database, used by the app and the
monitor), `fitting` (sweeps and CSV files to fitted laws, with `fit_report` and `csvdata`), `suggest`
(the configurator against a database), `plotting` (figures), `export` (CSV and Parquet), `own_run` and
`own_records` (a run of one's own training loop, for the Python API and for `train.entrypoint` sweeps
through `entrypoint`) and `stop_requests` (stopping one run of a bundle). They import the vocabulary,
the store, the analysis and, only inside worker processes, the engine; never textual.
"""
