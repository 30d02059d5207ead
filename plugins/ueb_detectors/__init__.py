"""Detectors: given a training set, a score per image and a verdict per set."""
