"""Label-agnostic poisoners built on a CLIP model from a local folder: Unlearnable Clusters, 14A."""

from ueb.hookspecs import hookimpl


@hookimpl
def register_poisoners(register):
    register(
        "uc",
        "ueb_attacks_clip.uc:UnlearnableClusters",
        summary="UC, Unlearnable Clusters (Zhang et al., CVPR 2023): label-agnostic cluster-wise generator noise on local CLIP features, Linf 16/255",
        family="generative",
        hidden_from_all=True,  # needs local CLIP weights (clip_path): selected by name or family
    )
    register(
        "14a",
        "ueb_attacks_clip.one_for_all:OneForAll",
        summary="14A, One for All concept unlearnability (Chen et al., ICML 2024): universal label-agnostic generator aligned with local CLIP text concepts, L2",
        family="generative",
        hidden_from_all=True,  # needs local CLIP weights (clip_path): selected by name or family
    )
