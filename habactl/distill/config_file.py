"""Compress configs: every `habactl compress` setting in one TOML file.

``habactl compress --config config.toml`` reads one (flags given on the command line
override it); ``habactl inspect A.haba --config`` writes the one that rebuilds A from
its provenance. The file's keys are the compress options' names with ``_`` for ``-``
(``lr_bases = 0.5`` is ``--lr-bases 0.5``), plus what the command line cannot say:

- ``pipeline``: the decode pipeline as manifest entries (``[[pipeline]]`` tables with
  ``name``, ``version`` and ``configuration``), in place of ``codec`` and its options;
- ``[settings]``: every setting of the objective (``--real-per-class`` and the rest);
- ``[contrastive_settings]``: every setting of the contrastive term;
- ``[stage_options]``: options of the codec preset's stages that no flag sets, by stage
  (``upsample = {mode = "nearest"}``);
- ``hallucinator_noise``: the spread of the hallucinators' initial weights.

No torch here: ``inspect`` stays fast. Python 3.11 reads TOML with ``tomllib``; 3.10
needs the ``tomli`` package (a dependency there only).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from habactl.distill.errors import DistillError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]

# The config's tables: the objective's settings, the contrastive term's, and options of
# the codec preset's stages by stage ([stage_options.upsample]).
TABLES = ("settings", "contrastive_settings", "stage_options")


def load_config(path: str | Path) -> dict[str, Any]:
    """The settings of a config file; DistillError naming the file when it cannot be read."""
    path = Path(path)
    if path.is_dir():
        raise DistillError(f"--config {path} is a folder, not a config file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DistillError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DistillError(f"--config {path} cannot be read ({error})") from None
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise DistillError(f"--config {path} is not valid TOML ({error})") from None
    for table in TABLES:
        if table in config and not isinstance(config[table], dict):
            raise DistillError(f"--config {path}: {table} must be a table")
    pipeline = config.get("pipeline")
    if pipeline is not None and not (
        isinstance(pipeline, list) and all(isinstance(e, dict) for e in pipeline)
    ):
        raise DistillError(
            f"--config {path}: pipeline must be a list of {{name, version, configuration}} tables"
        )
    return config


def config_from_manifest(
    manifest: Mapping[str, Any], setting_names: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The config that rebuilds an archive, from its manifest's provenance.

    ``setting_names``: the names of the objective's settings (its ``defaults``); the
    provenance also records facts that are not settings (e.g. the experts buffer's
    digest), and only settings go into ``[settings]``.
    """
    provenance = manifest["provenance"]
    hyper = provenance.get("hyperparameters") or {}
    objective = provenance["objective"]
    config: dict[str, Any] = {
        "data": provenance["dataset"]["name"],
        "objective": objective,
        "ipc": manifest["storage"]["ipc"],
        "seed": provenance["seed"],
    }
    if objective == "random" or "budget" not in hyper:
        return config
    optimizer, init = hyper["optimizer"], hyper["init"]
    config.update(
        {
            "budget_counts": manifest["storage"].get("counts", "all"),
            "leftover": hyper["budget"]["leftover"],
            "iterations": provenance["iterations"],
            "lr_bases": optimizer["lr_bases"],
            "lr_hallucinators": optimizer["lr_hallucinators"],
            "momentum": optimizer["momentum"],
            "init": init["bases"],
            "hallucinator_noise": init["hallucinator_noise"],
            "augment": hyper["augmentation"]["strategy"],
            "contrastive": hyper["contrastive"] is not None,
            "device": hyper["device"],
            "threads": hyper["threads"],
        }
    )
    if "classes_per_iteration" in hyper:  # recorded only when it was set
        config["classes_per_iteration"] = hyper["classes_per_iteration"]
    stages = [entry["name"] for entry in manifest["pipeline"]]
    if "hallucinate" not in stages:  # recorded from the config only; keep it as it was
        config["hallucinator_hidden"] = hyper["pipeline"]["hidden"]
        config["hallucinator_kernel"] = hyper["pipeline"]["kernel"]
    recorded = {k: v for k, v in hyper["objective"].items() if k != "name"}
    if setting_names is not None:
        recorded = {k: v for k, v in recorded.items() if k in setting_names}
    # a teacher is recorded as what it was (file name, digest, ...): the setting is its file
    config["settings"] = {
        k: v["file"] if isinstance(v, Mapping) and "file" in v else v
        for k, v in recorded.items()
        if v is not None
    }
    if hyper["budget"].get("labels") is not None:  # compress --labels
        config["labels"] = hyper["budget"]["labels"]
    if hyper["contrastive"] is not None:
        config["contrastive_settings"] = dict(hyper["contrastive"])
    config["pipeline"] = [
        {"name": e["name"], "version": e["version"], "configuration": dict(e["configuration"])}
        for e in manifest["pipeline"]
    ]
    return config


def to_toml(config: Mapping[str, Any], title: str = "") -> str:
    """A config as TOML: plain keys first, then tables, then ``[[pipeline]]`` entries."""
    lines = [f"# {line}" for line in title.splitlines()]
    plain = {k: v for k, v in config.items() if k not in TABLES and k != "pipeline"}
    pipeline = config.get("pipeline")
    if pipeline is not None and not pipeline:
        plain["pipeline"] = []  # no decode stages: the bases are the images
    lines += [f"{key} = {_value(value)}" for key, value in plain.items()]
    for table in TABLES:
        if table in config:
            lines += ["", f"[{table}]"]
            lines += [f"{_key(k)} = {_value(v)}" for k, v in config[table].items() if v is not None]
    for entry in pipeline or []:
        lines += [
            "",
            "[[pipeline]]",
            f"name = {_value(entry['name'])}",
            f"version = {_value(entry['version'])}",
            f"configuration = {_value(entry['configuration'])}",
        ]
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DistillError(f"a config cannot hold the number {value}")
        return repr(value)  # shortest text that reads back as the same double
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: the same escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return (
            "{"
            + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None)
            + "}"
        )
    raise DistillError(f"a config cannot hold {type(value).__name__} values")


def archive_config_toml(manifest: Mapping[str, Any], path: str | Path = "") -> str:
    """The TOML config that rebuilds the archive ``manifest`` describes (``inspect --config``).

    Imports the objective registry (and with it torch) to tell the objective's settings
    from the other facts its provenance records.
    """
    provenance = manifest["provenance"]
    names = None
    if provenance["objective"] != "random":
        from habactl.distill.objectives import OBJECTIVES

        known = OBJECTIVES.get(provenance["objective"])
        names = None if known is None else known.defaults
    dataset = provenance["dataset"]
    title = (
        f"habactl compress config for {Path(path).name or 'an archive'} "
        f"(made by {provenance.get('library', 'habactl')})\n"
        f"data set {dataset['name']}, {dataset.get('fingerprint', '')}\n"
        "rebuild: habactl compress --config THIS.toml -o OUT.haba"
    )
    return to_toml(config_from_manifest(manifest, names), title)
