"""Train your own network on a .haba archive with the archive's own training recipe.

    python examples/train_own_loop.py mnist-5k.haba [--epochs N] [--net small|convnet|resnet18]

An archive whose recipe trains on its teacher's outputs (online distillation) also needs
--teacher T.safetensors. An archive with per-crop labels (relabel --crops) trains on its
stored crops and their labels.
"""
import argparse
from functools import partial

import torch
from torch import nn
from torch.utils.data import DataLoader

from habactl import HabaDataset
from habactl.data import load_source
from habactl.nets import build_net
from habactl.teacher import load_teacher


def small_cnn(channels: int, height: int, width: int, classes: int) -> nn.Module:
    """A network of the user's own, not one habactl distilled with."""
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (height // 4) * (width // 4), classes))


def train_and_test(archive: str, make_net=small_cnn, epochs: int | None = None,
                   seed: int = 0, data: str | None = None, teacher: str | None = None) -> float:
    """Train make_net(channels, height, width, classes) on the archive; test accuracy in %."""
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train = HabaDataset(archive)
    recipe = train.recipe.with_(epochs=epochs)        # None keeps the recorded epochs
    if recipe.teacher and not teacher:                # it records the teacher it needs
        raise SystemExit(f"{archive} trains on its teacher's outputs: give --teacher "
                         f"{recipe.teacher.text()}")
    teacher = teacher and load_teacher(teacher, device=device)
    net = make_net(*train.image_shape, train.num_classes).to(device)
    loader = DataLoader(train, batch_size=recipe.batch_size, shuffle=True)
    augment = recipe.augmentation(seed=seed)          # the recorded DSA (no flip for digits)
    views = train.crop_views() if recipe.kind == "kd" else None  # per-crop labels, if any
    loss_fn, optimizer = recipe.loss(), recipe.optimizer(net.parameters())
    scheduler = recipe.scheduler(optimizer)           # lr x 0.1 half-way, stepped per epoch

    def step(images, labels):
        if teacher:                                   # online distillation: its outputs
            labels = teacher.probabilities(images)    # are the targets of recipe.loss()
        optimizer.zero_grad()
        loss_fn(net(images), labels).backward()
        optimizer.step()

    for epoch in range(recipe.epochs):
        augment.set_epoch(epoch)
        net.train()
        if views is None:
            for images, labels in loader:
                images, labels = augment(images.to(device)), labels.to(device)
                step(images, labels)
        else:                                         # each image in its stored crop,
            for index in torch.randperm(len(train)).split(recipe.batch_size):
                images = views.apply(train.fetch(index)[0], epoch, index)
                step(images.to(device), views.targets(epoch, index).to(device))  # its label
        scheduler.step()

    test = load_source(data or recipe.dataset).test   # real test images in [0, 1]
    normalise = train.test_transform()                # mean/std or ZCA, as the archive's
    net.eval()
    with torch.no_grad():
        predicted = torch.cat([net(x.to(device)).argmax(1).cpu()
                               for x in normalise(test.images).split(500)])
    return 100.0 * (predicted == test.labels).float().mean().item()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--net", default="small", help="small (below), convnet, resnet18, ...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", help="real data set to test on (default: the archive's)")
    parser.add_argument("--teacher", help="teacher file, for online distillation")
    args = parser.parse_args()
    make_net = small_cnn if args.net == "small" else partial(build_net, args.net)
    accuracy = train_and_test(args.archive, make_net, args.epochs, args.seed, args.data,
                              args.teacher)
    print(f"test accuracy {accuracy:.2f} %")
