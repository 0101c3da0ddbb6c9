"""Evaluating a model: exact sharded evaluation and its report (`evaluation`), class predictions for image
files (`predict`), the figures of an evaluated split (`plots`)."""
