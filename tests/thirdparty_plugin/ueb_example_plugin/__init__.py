"""Registers one poisoner and one countermeasure, the way any third-party package would."""

from ueb.hookspecs import hookimpl


@hookimpl
def register_poisoners(register):
    register(
        "corner-patch",
        "ueb_example_plugin.methods:CornerPatch",
        summary="Class-wise 3x3 corner patch (example)",
    )


@hookimpl
def register_countermeasures(register):
    register(
        "hflip-all",
        "ueb_example_plugin.methods:FlipAll",
        summary="Flip every training image (example)",
    )
