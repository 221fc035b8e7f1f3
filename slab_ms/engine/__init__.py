"""The training engine behind train.py and validate.py: config schema, data, train step,
PRepBN schedule, checkpoints and the run itself (:func:`slab_ms.engine.task.train`)."""
