"""Poisoners published since 2023: CUDA, SEM, AUE/AAP, GUE, PUE.

Defaults are each method's official settings; docs/poisoners-modern.md gives the sources and
what the smoke and quick presets change.
"""

from ueb.hookspecs import hookimpl


@hookimpl
def register_poisoners(register):
    register(
        "cuda",
        "ueb_attacks_modern.cuda:ConvolutionBasedUnlearnable",
        summary="CUDA, class-wise random convolutions (Sadasivan, Soltanolkotabi, Feizi, CVPR 2023), unbounded, model-free",
        family="surrogate-free",
    )
    register(
        "sem",
        "ueb_attacks_modern.sem:StableErrorMinimizing",
        summary="SEM, stable error-minimising noise (Liu, Xu, Chen, Sun, AAAI 2024), sample-wise Linf 8/255",
        family="error-minimising",
    )
    register(
        "aue",
        "ueb_attacks_modern.aue:AugmentedUnlearnable",
        summary="AUE, augmented unlearnable examples (Wang, Zhu, Gao, NeurIPS 2024), sample-wise Linf 8/255",
        family="error-minimising",
    )
    register(
        "aap",
        "ueb_attacks_modern.aap:AugmentedAdversarialPoisoning",
        summary="AAP, augmented adversarial poisoning, targeted (Wang, Zhu, Gao, NeurIPS 2024), sample-wise Linf 8/255",
        family="error-maximising",
    )
    register(
        "aap-untargeted",
        "ueb_attacks_modern.aap:AugmentedAdversarialPoisoning",
        summary="AAP, untargeted variant (Wang, Zhu, Gao, NeurIPS 2024), sample-wise Linf 8/255",
        family="error-maximising",
        defaults={"targeted": False},
    )
    register(
        "gue",
        "ueb_attacks_modern.gue:GameTheoreticUnlearnable",
        summary="GUE, game-theoretic unlearnable example generator (Liu, Wang, Gao, AAAI 2024), U-Net generator, sample-wise Linf 8/255",
        family="generative",
    )
    register(
        "pue",
        "ueb_attacks_modern.pue:ProvablyUnlearnable",
        summary="PUE, provably unlearnable examples with certified (q, eta)-learnability (Wang, Xue, Li, Camtepe, Zhu, NDSS 2025), class-wise Linf 8/255",
        family="error-minimising",
    )
