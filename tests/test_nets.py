"""Networks: shapes on every data set size, ConvNet-3 as in the reference, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from habactl.errors import HabaError
from habactl.nets import ARCHITECTURES, ConvNet, build_net

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forward_shape_finite_and_input_dependent(arch, shape):
    torch.manual_seed(0)
    net = build_net(arch, *shape, num_classes=7)
    x = torch.randn(2, *shape)
    logits = net(x)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    # Instance norm on a 1x1 map would make the output a constant: the net would be blind.
    assert (logits[0] - logits[1]).abs().max() > 1e-3
    features = net.embed(x)
    assert features.shape == (2, net.feature_dim)
    assert torch.allclose(net.classifier(features), logits)


@pytest.mark.parametrize(
    "shape, feat", [((1, 28, 28), 2048), ((3, 32, 32), 2048), ((1, 8, 8), 128)]
)
def test_convnet_feature_dim(shape, feat):
    net = build_net("convnet", *shape, num_classes=10)
    assert isinstance(net, ConvNet)
    assert net.feature_dim == feat
    assert net.classifier.in_features == feat


def test_convnet_parameter_count_matches_reference():
    net = build_net("convnet", 3, 32, 32, num_classes=10)
    conv1 = 3 * 128 * 9 + 128
    conv23 = 2 * (128 * 128 * 9 + 128)
    norms = 3 * (128 + 128)  # GroupNorm(128, 128) weight and bias
    head = 2048 * 10 + 10
    assert conv1 + conv23 + norms + head == 320_010
    assert sum(p.numel() for p in net.parameters()) == 320_010
    norms_found = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert [(m.num_groups, m.num_channels) for m in norms_found] == [(128, 128)] * 3


def test_first_conv_pads_mnist_to_32():
    net = build_net("convnet", 1, 28, 28, num_classes=10)
    assert net.features[0].padding == (3, 3)
    assert build_net("convnet", 1, 8, 8, num_classes=10).features[0].padding == (1, 1)


def test_unknown_arch_names_the_known_ones():
    with pytest.raises(HabaError, match="convnet.*resnet18"):
        build_net("lenet", 1, 28, 28, num_classes=10)


@pytest.mark.parametrize("kwargs", [{"norm": "weird"}, {"width_mult": 0}])
def test_bad_options_raise(kwargs):
    with pytest.raises(HabaError):
        build_net("convnet", 1, 8, 8, num_classes=10, **kwargs)


def test_bad_shape_raises():
    with pytest.raises(HabaError, match="channels"):
        build_net("convnet", 0, 8, 8, num_classes=10)


def test_deterministic_under_manual_seed():
    torch.manual_seed(3)
    a = build_net("convnet", 1, 8, 8, num_classes=10).state_dict()
    torch.manual_seed(3)
    b = build_net("convnet", 1, 8, 8, num_classes=10).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_width_mult_and_norm_options():
    small = build_net("convnet", 1, 8, 8, num_classes=10, width_mult=0.25)
    assert small.feature_dim == 32
    plain = build_net("convnet", 1, 8, 8, num_classes=10, norm="none")
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in plain.modules())


def test_gradient_matching_double_backward_through_functional_call():
    """DC matches weight gradients, so d(grad)/d(images) must exist."""
    torch.manual_seed(0)
    net = build_net("convnet", 1, 8, 8, num_classes=3)
    params = dict(net.named_parameters())
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    loss = torch.nn.functional.cross_entropy(functional_call(net, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    match = sum((g**2).sum() for g in grads)
    (gx,) = torch.autograd.grad(match, x)
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0


def test_fast_pool_is_avg_pool_in_value_gradient_and_second_order():
    from torch.func import grad, vmap

    from habactl.nets.pool import Pool2x2

    torch.manual_seed(0)
    pool = Pool2x2()
    x = torch.randn(3, 4, 6, 8, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(pool, (x,)) and torch.autograd.gradgradcheck(pool, (x,))
    assert torch.allclose(pool(x), F.avg_pool2d(x, 2))
    assert torch.equal(pool(x[..., :5, :7]), F.avg_pool2d(x[..., :5, :7], 2))  # odd: avg_pool2d
    weight = torch.randn(5, 4, 3, 3, dtype=torch.double, requires_grad=True)

    def loss(w, images, pooling):
        return pooling(F.conv2d(images, w, padding=1)).tanh().square().sum()

    reference = lambda t: F.avg_pool2d(t, 2)  # noqa: E731
    # Gradient matching differentiates a weight gradient again, w.r.t. the images.
    first = [
        torch.autograd.grad(loss(weight, x, p), weight, create_graph=True)[0]
        for p in (pool, reference)
    ]
    second = [torch.autograd.grad(g.square().sum(), x)[0] for g in first]
    assert torch.allclose(first[0], first[1]) and torch.allclose(second[0], second[1])
    # dc's per_class=vmap mode: per-sample gradients through torch.func.
    per_sample = [
        vmap(grad(loss), in_dims=(None, 0, None))(weight, x.unsqueeze(1), p)
        for p in (pool, reference)
    ]
    assert torch.allclose(per_sample[0], per_sample[1])
