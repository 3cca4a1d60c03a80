"""The training engine: torch only, knows nothing of storage or UI.

    dataset_files.py  dataset files on disk, generated or checked without torch (prepare_dataset)
    data.py           datasets as whole tensors on the device (load_dataset)
    models.py         mlp / resmlp / resnet, parameter and FLOP counts (build_model, model_info)
    optim.py          optimizers and the pure schedule lr_at(step)
    probes.py         per-layer gradient / weight / update norms (LayerProbe)
    checkpoints.py    atomic, weights_only checkpoint files
    loop.py           train_run(spec, sink, stop, ...): one run, start or resume to finish
    sinks.py          MemorySink, an in-memory records.Sink for tests and benchmarks

Nothing is imported here, so `import scaletui.engine` stays free of torch until a submodule is used.
"""
