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
    )
    register(
        "ucl",
        "ueb_attacks_apbench.ucl:ContrastivePoisoning",
        summary="UCL, contrastive poisoning CP-S (He, Zha, Katabi, ICLR 2023): sample-wise, minimises a SimCLR loss, Linf 8/255",
    )
    register(
        "ucl-class",
        "ueb_attacks_apbench.ucl:ContrastivePoisoning",
        summary="UCL, contrastive poisoning CP-C (He, Zha, Katabi, ICLR 2023): class-wise, minimises a SimCLR loss, Linf 8/255",
        defaults={"mode": "class"},
    )
    register(
        "tue",
        "ueb_attacks_apbench.tue:TransferableUnlearnable",
        summary="TUE, transferable unlearnable examples (Ren, Xu, Wan, Ma, Sun, Tang, ICLR 2023): contrastive error-minimising noise with class-wise separability, Linf 8/255",
    )
