"""Countermeasures published since 2023: purification, interpolation, filtering, schedules.

Targets are "module:Class" strings, so listing them never imports torch.
docs/countermeasures-defences.md gives each method's source, threat model and settings.
They are selected by name, by family (`-c family:purification`) or with
benchmarks/matrices/defences.toml; `-c all` stays the paper's Table I set plus ISS, UEraser,
orthogonal projection, AVATAR and SimCLR, so the main job does not grow with each new defence.
"""

from ueb.hookspecs import hookimpl


@hookimpl
def register_countermeasures(register):
    register(
        "coin",
        "ueb_defences.coin:Coin",
        summary="COIN (Wang et al., AAAI'25): random pixel interpolation, alpha 2, every step; plain track (poisoned data only)",
        stage="train",
        family="interpolation",
        hidden_from_all=True,  # `-c all` stays the main job's 21 columns
    )
    register(
        "rsk-ff",
        "ueb_defences.rsk:RskFF",
        summary="RSK+FF (Kim & Sandoval-Segura, AdvML-Frontiers@NeurIPS'24): random sharpening kernel, then 30% DCT low-pass; plain track",
        stage="train",
        family="filtering",
        hidden_from_all=True,  # `-c all` stays the main job's 21 columns
    )
    register(
        "udp-sda",
        "ueb_defences.udp:UdpSda",
        summary="UDP SDA+AN (Zhu, Yu & Gao, AAAI'24): noise from an adversarially trained 2-layer net, then stronger augmentation; plain track",
        stage="protocol",
        family="augmentation",
        hidden_from_all=True,  # `-c all` stays the main job's 21 columns
    )
    register(
        "d-vae",
        "ueb_defences.dvae:DVae",
        summary="D-VAE (Yu et al., ICML'24): two-stage purification by rate-constrained VAEs trained on the poisoned set; plain track",
        stage="data",
        family="purification",
        hidden_from_all=True,  # `-c all` stays the main job's 21 columns
    )
    register(
        "early-stopping",
        "ueb_defences.early_stopping:EarlyStopping",
        summary="Early stopping on a held-out 10% of the training data, patience 10 (after Sandoval-Segura et al. 2022); plain track, no test labels",
        stage="protocol",
        family="schedule",
        hidden_from_all=True,  # `-c all` stays the main job's 21 columns
    )
    register(
        "eclipse",
        "ueb_defences.eclipse:Eclipse",
        summary="ECLIPSE (Wang et al., ESORICS'24): DDPM trained on a sparse 4% clean set, diffuse to t*=100/4000 and denoise, then grayscale p 0.4 + noise 0.05; clean-data track",
        stage="protocol",
        family="purification",
        hidden_from_all=True,  # `-c all` stays the main job's 21 columns
    )
