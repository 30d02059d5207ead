"""Label-agnostic poisoners built on a CLIP model from a local folder: Unlearnable Clusters, 14A."""

from ueb.hookspecs import hookimpl


@hookimpl
def register_poisoners(register):
    pass
