"""The engine's network helpers: explicit-generator init and the fast no-grad embedding."""

from __future__ import annotations

import pytest
import torch

from habactl.nets import seeded as networks


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_fast_embedding_equals_the_network(shape):
    generator = torch.Generator().manual_seed(0)
    net = networks.build(
        "convnet", shape, 10, device=torch.device("cpu"), generator=generator, trainable=False
    )
    images = torch.randn(40, *shape, generator=generator)
    with torch.inference_mode():
        fast = networks.embed_no_grad(net, images, 16)
        plain = net.embed(images)
    assert networks._plain_layers(net) is not None  # the fast path was taken
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)


def test_redraw_follows_the_generator_not_the_global_rng():
    def draw(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)  # the global RNG must not matter
        net = networks.build(
            "convnet",
            (1, 28, 28),
            10,
            device=torch.device("cpu"),
            generator=torch.Generator().manual_seed(5),
            trainable=False,
        )
        return torch.cat([p.flatten() for p in net.parameters()])

    state = torch.get_rng_state()
    first, second = draw(1), draw(2)
    torch.set_rng_state(state)
    assert torch.equal(first, second)
    conv = first[: 128 * 9]
    assert conv.abs().max() <= 1 / 3 and conv.std() > 0.1  # U(±1/sqrt(fan_in)), fan_in 9
