"""Poisoners APBench offers besides the paper's baselines: DC, NTGA, HYPO, UCL, TUE.

Each method's defaults are its official repository's (or APBench's) settings;
docs/poisoners-apbench.md gives the sources.
"""

from ueb.hookspecs import hookimpl


@hookimpl
def register_poisoners(register):
    register(
        "hypo",
        "ueb_attacks_apbench.hypo:Hypocritical",
        summary="HYPO, hypocritical perturbations (Tao, Feng, Yi, Huang, Chen, NeurIPS 2021): error-minimising against a clean-trained model, Linf 8/255",
        family="error-minimising",
    )
    register(
        "ucl",
        "ueb_attacks_apbench.ucl:ContrastivePoisoning",
        summary="UCL, contrastive poisoning CP-S (He, Zha, Katabi, ICLR 2023): sample-wise, minimises a SimCLR loss, Linf 8/255",
        family="contrastive",
    )
    register(
        "ucl-class",
        "ueb_attacks_apbench.ucl:ContrastivePoisoning",
        summary="UCL, contrastive poisoning CP-C (He, Zha, Katabi, ICLR 2023): class-wise, minimises a SimCLR loss, Linf 8/255",
        family="contrastive",
        defaults={"mode": "class"},
    )
    register(
        "tue",
        "ueb_attacks_apbench.tue:TransferableUnlearnable",
        summary="TUE, transferable unlearnable examples (Ren, Xu, Wan, Ma, Sun, Tang, ICLR 2023): contrastive error-minimising noise with class-wise separability, Linf 8/255",
        family="contrastive",
    )
    register(
        "dc",
        "ueb_attacks_apbench.dc:DeepConfusion",
        summary="DC, Deep Confusion (Feng, Cai, Zhou, NeurIPS 2019): an auto-encoder trained to confuse a classifier, sample-wise Linf 8/255",
        family="generative",
    )
    register(
        "ntga",
        "ueb_attacks_apbench.ntga:NeuralTangentGeneralization",
        summary="NTGA, neural tangent generalization attacks (Yuan & Wu, ICML 2021): NTK-GP surrogate via JAX (pip install 'ueb[ntga]'), Linf 8/255",
        family="error-maximising",
        hidden_from_all=True,  # needs the optional JAX packages: selected by name or family
    )
