"""Experiment launcher (``python -m experiments.train``) and configs (``experiments/configs``)."""
