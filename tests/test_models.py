"""Shapes, layer settings and GPM layer selection of the paper's networks."""

from __future__ import annotations

import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.models.dynamic_modules import avalanche_model_adaptation
from avalanche.models.utils import avalanche_forward
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.utils.data import TensorDataset

from avalanche_gpm.models import AlexNet, PermutedMNISTMLP, ReducedResNet18, alexnet, pmnist_mlp, reduced_resnet18
from avalanche_gpm.selection import select_layers


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def two_task_stream(classes_per_task: int, shape: tuple[int, ...]):
    """A tiny task-incremental stream of two experiences with task labels 0 and 1."""
    n_classes = 2 * classes_per_task
    y = torch.arange(4 * n_classes) % n_classes
    data = TensorDataset(torch.randn(len(y), *shape), y)
    data.targets = y.tolist()
    benchmark = nc_benchmark(
        data,
        data,
        n_experiences=2,
        task_labels=True,
        shuffle=False,
        fixed_class_order=list(range(n_classes)),
        class_ids_from_zero_in_each_exp=True,
    )
    return benchmark.train_stream


def adapt_to_two_tasks(model: nn.Module, classes_per_task: int, shape: tuple[int, ...]) -> None:
    for experience in two_task_stream(classes_per_task, shape):
        avalanche_model_adaptation(model, experience)


def backbone_params(model: nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("classifier."))


def check_layer_settings(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if name.startswith("classifier"):
            continue
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            assert module.bias is None, name
        if isinstance(module, _NormBase):
            assert not module.track_running_stats, name
            assert module.running_mean is None, name


def test_mlp_shapes_and_params() -> None:
    model = pmnist_mlp()
    assert isinstance(model, PermutedMNISTMLP)
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    assert model(torch.randn(5, 784)).shape == (5, 10)
    assert sum(p.numel() for p in model.parameters()) == 784 * 100 + 100 * 100 + 100 * 10
    check_layer_settings(model)


def test_mlp_selection() -> None:
    selection = select_layers(pmnist_mlp())
    assert list(selection.protected) == ["fc1", "fc2", "fc3"]
    assert selection.unprotected == [] and selection.norms == {}


def test_alexnet_shapes_and_params() -> None:
    model = alexnet()
    assert isinstance(model, AlexNet)
    assert model.fc1.in_features == 256 * 2 * 2
    x = torch.randn(4, 3, 32, 32)
    assert model(x, 0).shape == (4, 10)
    assert model.features(x).shape == (4, 2048)
    convs = 3 * 64 * 4 * 4 + 64 * 128 * 3 * 3 + 128 * 256 * 2 * 2
    fcs = 1024 * 2048 + 2048 * 2048
    bns = 2 * (64 + 128 + 256 + 2048 + 2048)
    assert backbone_params(model) == convs + fcs + bns
    check_layer_settings(model)


def test_alexnet_input_size_sets_fc1() -> None:
    assert alexnet(input_size=64).fc1.in_features == 256 * 6 * 6
    with pytest.raises(ValueError):
        alexnet(input_size=8)


def test_alexnet_selection() -> None:
    selection = select_layers(alexnet())
    assert list(selection.protected) == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert "classifier" in selection.excluded
    assert list(selection.norms) == ["bn1", "bn2", "bn3", "bn4", "bn5"]
    assert selection.unprotected == [] and selection.running_stats == []


@pytest.mark.parametrize(
    ("input_size", "first_stride", "feature_dim"),
    [(32, 1, 160 * 2 * 2), (84, 2, 160 * 3 * 3)],
)
def test_resnet_shapes(input_size: int, first_stride: int, feature_dim: int) -> None:
    model = reduced_resnet18(input_size=input_size, first_stride=first_stride)
    assert isinstance(model, ReducedResNet18)
    assert model.classifier.in_features == feature_dim
    x = torch.randn(3, 3, input_size, input_size)
    assert model.features(x).shape == (3, feature_dim)
    assert model(x, 0).shape == (3, 5)
    check_layer_settings(model)


def test_resnet_structure_and_selection() -> None:
    model = reduced_resnet18(nf=20)
    widths = [stage[-1].conv2.out_channels for stage in (model.layer1, model.layer2, model.layer3, model.layer4)]
    assert widths == [20, 40, 80, 160]
    # Only the first block of stages 2-4 changes shape, so only those have a projection shortcut.
    shortcuts = [n for n, m in model.named_modules() if n.endswith("shortcut") and not isinstance(m, nn.Identity)]
    assert shortcuts == ["layer2.0.shortcut", "layer3.0.shortcut", "layer4.0.shortcut"]

    selection = select_layers(model)
    assert len(selection.protected) == 1 + 8 * 2 + 3 == 20
    assert all(isinstance(m, nn.Conv2d) for m in selection.protected.values())
    assert next(iter(selection.protected)) == "conv1"
    assert "classifier" in selection.excluded
    assert selection.unprotected == [] and selection.running_stats == []


@pytest.mark.parametrize(
    ("build", "shape", "classes_per_task"),
    [
        (lambda: alexnet(classes_per_task=10), (3, 32, 32), 10),
        (lambda: reduced_resnet18(classes_per_task=5), (3, 32, 32), 5),
    ],
    ids=["alexnet", "resnet18"],
)
def test_multitask_forward(build, shape: tuple[int, ...], classes_per_task: int) -> None:
    model = build()
    adapt_to_two_tasks(model, classes_per_task, shape)
    assert sorted(model.classifier.classifiers) == ["0", "1"]
    # Eval mode turns dropout off; batch norm uses batch statistics in both modes.
    model.eval()

    x = torch.randn(8, *shape)
    task_labels = torch.tensor([0, 1] * 4)
    with torch.no_grad():
        out = avalanche_forward(model, x, task_labels)
        assert out.shape == (8, classes_per_task)
        # Mixed batches are split by task, each going through its own head.
        for task in (0, 1):
            mask = task_labels == task
            torch.testing.assert_close(out[mask], model(x[mask], task))
        assert not torch.allclose(model(x, 0), model(x, 1))
