"""Poisoners published since 2023: CUDA, SEM, AUE/AAP, GUE, PUE."""

from ueb.hookspecs import hookimpl


@hookimpl
def register_poisoners(register):
    pass
