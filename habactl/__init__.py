"""habactl: dataset compression by distillation into versioned .haba archives."""

from habactl.errors import HabaError

__version__ = "0.1.0"

__all__ = ["HabaDataset", "HabaError", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import habactl` (and the CLI's --version) stays fast.
    if name == "HabaDataset":
        from habactl.training.dataset import HabaDataset

        return HabaDataset
    raise AttributeError(name)
