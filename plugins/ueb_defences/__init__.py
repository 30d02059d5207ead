"""Countermeasures published since 2023: purification, interpolation, filtering, schedules."""

from ueb.hookspecs import hookimpl


@hookimpl
def register_countermeasures(register):
    pass
