"""The vocabulary layer: the words, specs, records and typed rows every other layer of scaletui speaks.

Standard library only, imported by everything and importing nothing of scaletui outside itself:
`vocabulary` (statuses, loss rules, choices, defaults), `specs` (a run's resolved config and its key),
`plans` (a run's training plan: its config without size, seed and device), `records` (what training
emits, the Sink protocol), `rows` (what the store returns), `datasets` (the dataset catalogue),
`thresholds` (the alert detectors' numbers) and `config` (experiments.toml into a validated sweep).
"""
