"""Built-in victims: the paper's five architectures and a fast conv net for CPUs.

Targets are "module:Class" strings, so listing victims never imports torch. docs/victims.md
gives each architecture's source and the choices made for 32x32 inputs.
"""

from ueb.hookspecs import hookimpl


@hookimpl
def register_victims(register):
    register(
        "fastnet",
        "ueb_victims.fastnet:FastNet",
        summary="Small airbench-style conv net (conv-BN-GELU blocks with pooling): the CPU and smoke-test victim",
    )
    register(
        "resnet18",
        "ueb_victims.resnet:ResNet18",
        summary="ResNet-18 (He et al. 2016), CIFAR stem at 32x32, torchvision layout at 224; the paper's main victim",
    )
    register(
        "resnet50",
        "ueb_victims.resnet:ResNet50",
        summary="ResNet-50 (He et al. 2016), CIFAR stem at 32x32, torchvision layout at 224",
    )
