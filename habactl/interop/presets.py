"""``--dataset`` presets: class names and the mean/std the public codebases normalise with.

Values as the DC / DSA / DM, MTT, HaBa and IDC reference codes write them (facts
checked against their published sources, see docs/interop.md). One difference between
codebases matters: for CIFAR-100, DC / DSA / DM use CIFAR-100's own statistics, while
MTT, HaBa (built on MTT) and IDC reuse CIFAR-10's.
"""

from __future__ import annotations

from dataclasses import dataclass

from habactl.interop.safe_load import InteropError

_CIFAR10 = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
_CIFAR100 = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch "
    "crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo "
    "keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse "
    "mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy "
    "porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper "
    "snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television "
    "tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()
_FASHION = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_DIGITS = [str(d) for d in range(10)]


@dataclass(frozen=True)
class Preset:
    name: str
    classes: tuple[str, ...]
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


PRESETS: dict[str, Preset] = {
    "mnist": Preset("mnist", tuple(_DIGITS), (1, 28, 28), (0.1307,), (0.3081,)),
    "fashion-mnist": Preset("fashion-mnist", tuple(_FASHION), (1, 28, 28), (0.2861,), (0.3530,)),
    "svhn": Preset(
        "svhn", tuple(_DIGITS), (3, 32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
    ),
    "cifar10": Preset(
        "cifar10", tuple(_CIFAR10), (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    ),
    "cifar100": Preset(
        "cifar100",
        tuple(_CIFAR100),
        (3, 32, 32),
        (0.5071, 0.4866, 0.4409),
        (0.2673, 0.2564, 0.2762),
    ),
    # Class names are the WordNet ids of the folders, which habactl does not ship: the
    # preset names the classes by index and says so (docs/interop.md).
    "tiny-imagenet": Preset(
        "tiny-imagenet",
        tuple(f"class-{i:03d}" for i in range(200)),
        (3, 64, 64),
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
    ),
}
ALIASES = {
    "fashionmnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "tiny": "tiny-imagenet",
    "tinyimagenet": "tiny-imagenet",
    "tiny_imagenet": "tiny-imagenet",
}
# Codebases that normalise CIFAR-100 with CIFAR-10's statistics.
CIFAR10_STATS_FOR_CIFAR100 = ("mtt", "haba-official", "idc", "dd-ranking")


def preset(name: str, kind: str | None = None) -> Preset:
    """The preset ``name`` (case-insensitive), with the statistics ``kind``'s code uses."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in PRESETS:
        raise InteropError(f"unknown --dataset {name!r} (known: {', '.join(PRESETS)})")
    found = PRESETS[key]
    if key == "cifar100" and kind in CIFAR10_STATS_FOR_CIFAR100:
        cifar10 = PRESETS["cifar10"]
        return Preset(found.name, found.classes, found.shape, cifar10.mean, cifar10.std)
    return found
