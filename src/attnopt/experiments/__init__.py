"""Experiments: plain functions that build data, train, solve SVMs and write a run folder."""
