"""The stages of the method, one plain function each, in one place:

    extract(images, out, spec, executor)              extract.py
    train_detector(data, out, executor)               train_detector.py
    pretrain(features, data, out, executor)           pretrain.py
    finetune(options, out, executor)                  finetune.py
    evaluate(task, data, split, run=... | predictions=...)   evaluate.py

A stage takes its options and its output directory, checks every input it can before any
work is scheduled, and hands the work to an executor (executor.py): `InProcess` by default,
or `workflows.executors.DaskExecutor` for shards over Dask workers and DDP training. A stage
knows nothing of Dask. What the training stages share (loop settings in layers, the resume
rule, config.yaml) is training.py; the record that lets `lxmert-pipeline run` skip, resume
or refuse a stage is record.py.
"""
