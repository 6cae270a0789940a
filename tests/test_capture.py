"""Layer inputs as representation columns: im2col order, bias inputs, per-layer sample budgets."""

import pytest
import torch
from torch import nn

from avalanche_gpm.capture import GramRecorder, conv_patches, input_vectors


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 5, 3, stride=2, padding=1, dilation=2, bias=False),
        nn.Conv2d(3, 4, (2, 3), stride=(1, 2), padding=(1, 0), bias=False),
        nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect", bias=False),
        nn.Conv2d(2, 4, 4, padding="same", dilation=1, bias=False),
    ],
    ids=["stride2-pad1-dil2", "rect-kernel", "reflect", "same"],
)
def test_weight_times_patches_is_the_convolution(conv):
    x = torch.randn(2, conv.in_channels, 9, 11)
    out = conv(x)
    patches = conv_patches(conv, x)  # (N * L, C_in * kh * kw)
    via_patches = patches @ conv.weight.view(conv.out_channels, -1).T
    expected = out.permute(0, 2, 3, 1).reshape(-1, conv.out_channels)
    assert torch.allclose(via_patches, expected, atol=1e-5)


def test_bias_is_a_constant_input():
    linear = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    vectors = input_vectors(linear, x)
    weight = torch.cat([linear.weight, linear.bias[:, None]], dim=1)
    assert torch.allclose(vectors @ weight.T, linear(x), atol=1e-6)


def test_recorder_keeps_each_layers_sample_budget():
    model = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 2, bias=False))
    layers = {"0": model[0], "2": model[2]}
    x = torch.randn(10, 4)
    recorder = GramRecorder(layers, {"0": 3, "2": 7})
    with recorder.recording():
        model(x[:5])
        assert not recorder.done
        model(x[5:])
    assert recorder.done and recorder.seen == {"0": 3, "2": 7}
    assert torch.allclose(recorder.grams["0"], (x[:3].T @ x[:3]).double(), atol=1e-6)
    hidden = torch.relu(model[0](x[:7]))
    assert torch.allclose(recorder.grams["2"], (hidden.T @ hidden).double(), atol=1e-5)
    # hooks are gone after the context
    model(x)
    assert recorder.seen == {"0": 3, "2": 7}
