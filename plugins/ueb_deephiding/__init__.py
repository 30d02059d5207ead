"""Deep Hiding, the flagship poisoner (Meng et al. 2024), and its `ueb deephiding` commands.

Targets are "module:Class" strings and the CLI module imports torch only inside commands,
so listing plugins stays fast. docs/deephiding.md lists every setting and its source.
"""

from ueb.hookspecs import hookimpl


@hookimpl
def register_poisoners(register):
    register(
        "deephiding",
        "ueb_deephiding.poisoner:DeepHiding",
        summary="DH(C), Deep Hiding class-wise (Meng et al. 2024): one semantic image per class hidden by an invertible network, Linf 8/255",
        family="generative",
    )
    register(
        "deephiding-s",
        "ueb_deephiding.poisoner:DeepHiding",
        summary="DH(S), Deep Hiding sample-wise: each image hides a member of its class's semantic group, Linf 8/255",
        defaults={"mode": "sample"},
        family="generative",
    )


@hookimpl
def register_commands(cli):
    from ueb_deephiding.cli import build_app

    cli.add_typer(
        build_app(),
        name="deephiding",
        help="Deep Hiding: train a hider, generate, reveal hidden images",
    )
