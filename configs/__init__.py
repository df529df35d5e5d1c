"""Experiment configs: ``python -m experiments.train --config=configs/NAME.py[:ARG]``."""
