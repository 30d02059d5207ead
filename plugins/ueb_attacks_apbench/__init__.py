"""Poisoners APBench offers besides the paper's baselines: DC, NTGA, HYPO, UCL, TUE."""

from ueb.hookspecs import hookimpl


@hookimpl
def register_poisoners(register):
    pass
