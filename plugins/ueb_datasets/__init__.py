"""Built-in datasets: the embedded Fashion-MNIST subset, CIFAR-10/100, SVHN, Tiny-ImageNet and an
ImageNet subset, all from local files (docs/datasets.md gives each layout)."""

from ueb.hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    register(
        "fashion-mnist",
        "ueb_datasets.embedded:EmbeddedFashionMNIST",
        summary="Embedded default: 10 classes, 1,000 train + 200 test real images per class (MIT), 32x32 RGB",
    )
    register(
        "cifar10",
        "ueb_datasets.cifar:CIFAR10",
        summary="CIFAR-10 from the official python archive or folder under --data-root (no download)",
    )
    register(
        "cifar100",
        "ueb_datasets.cifar:CIFAR100",
        summary="CIFAR-100 from the official python archive or folder under --data-root (no download)",
    )
    register(
        "imagenet-subset",
        "ueb_datasets.imagefolder:ImageNetSubset",
        summary="ImageNet subset from train/ and val/ class folders: first 100 classes, 20% of train, 224x224",
    )
    register(
        "fashion-mnist-textured",
        "ueb_datasets.textured:TexturedFashionMNIST",
        summary="The embedded Fashion-MNIST images on random crops of natural photos (harder clean features), 32x32 RGB",
    )
    register(
        "svhn",
        "ueb_datasets.svhn:SVHN",
        summary="SVHN cropped digits (Netzer et al. 2011) from the official train_32x32.mat / test_32x32.mat under --data-root",
    )
    register(
        "tiny-imagenet",
        "ueb_datasets.tinyimagenet:TinyImageNet",
        summary="Tiny-ImageNet (200 classes, 64x64) from the official tiny-imagenet-200/ folder under --data-root",
    )
