"""The spec pages' test vectors (codecs/vectors/): habactl decodes them, and the
generator reproduces the committed files byte for byte."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from habactl.codecs import Pipeline

VECTORS = Path(__file__).resolve().parent.parent / "codecs" / "vectors"
FILES = sorted(VECTORS.glob("*.safetensors"))


def load(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert set(metadata) == {"stage"}
    return json.loads(metadata["stage"]), tensors


def test_every_stage_has_vectors():
    names = {p.name.split("-")[0] for p in FILES}
    assert names == {"upsample", "hallucinate", "quantize", "frequency"}
    for name in names:
        assert f"codecs/vectors/{name}-" in (VECTORS.parent / f"{name}.md").read_text()


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_vector_decodes(path):
    entry, tensors = load(path)
    x = tensors["input"]
    # quantize stores its input narrowed or packed: the bases' shape is its output's
    shape = tensors["output" if entry["name"] == "quantize" else "input"].shape[1:]
    pipeline = Pipeline.from_manifest([entry], tuple(shape))
    params = {
        f"pipeline.0.{k}": v
        for k, v in tensors.items()
        if k not in ("input", "variant", "classes", "output", "output_all")
    }
    pipeline.load_tensors(params)
    assert pipeline.to_manifest() == [entry]
    with torch.no_grad():
        if pipeline.expansion > 1:
            got = pipeline.decode(x, tensors["variant"])
            torch.testing.assert_close(
                pipeline.decode_all(x), tensors["output_all"], atol=1e-6, rtol=0
            )
        else:  # a per-class frequency mask: "classes" names each input's class
            got = pipeline.decode(x, classes=tensors.get("classes"))
    torch.testing.assert_close(got, tensors["output"], atol=1e-6, rtol=0)


def test_generator_reproduces_the_files(tmp_path):
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.main(tmp_path)
    assert sorted(p.name for p in written) == [p.name for p in FILES]
    for path in FILES:
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
