"""The reduced ResNet18 of the GPM paper's 5-Datasets and miniImageNet experiments.

This is the narrow ResNet18 of Lopez-Paz & Ranzato (GEM, 2017): the usual four stages of two
basic blocks each, but with ``nf = 20`` base filters (widths 20, 40, 80, 160) instead of 64.
As in the paper, no convolution has a bias, batch norm layers keep no running statistics (they
always normalise with the current batch), and each task has its own classifier head.

The first convolution has stride 1 for 32x32 inputs (5-Datasets) and stride 2 for 84x84 inputs
(miniImageNet). The heads are Avalanche :class:`~avalanche.models.MultiHeadClassifier` heads,
which have a bias where the paper's have none; GPM never projects them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from avalanche.models import MultiHeadClassifier, MultiTaskModule
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a residual connection.

    :param in_planes: input channels.
    :param planes: output channels.
    :param stride: stride of the first convolution (and of the shortcut).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, track_running_stats=False)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, track_running_stats=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            # The input must be brought to the output's shape before the sum.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes, track_running_stats=False),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ReducedResNet18(MultiTaskModule):
    """ResNet18 with ``nf`` base filters and one head per task.

    :param classes_per_task: number of outputs of each task head.
    :param nf: base width; the stages have ``nf``, ``2 nf``, ``4 nf`` and ``8 nf`` channels.
    :param in_channels: channels of the input images.
    :param input_size: height (= width) of the input images; sets the head input size.
    :param first_stride: stride of the first convolution.
    """

    def __init__(
        self,
        classes_per_task: int = 5,
        nf: int = 20,
        in_channels: int = 3,
        input_size: int = 32,
        first_stride: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, nf, kernel_size=3, stride=first_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf, track_running_stats=False)
        self.layer1 = self._make_stage(nf, nf, stride=1)
        self.layer2 = self._make_stage(nf, 2 * nf, stride=2)
        self.layer3 = self._make_stage(2 * nf, 4 * nf, stride=2)
        self.layer4 = self._make_stage(4 * nf, 8 * nf, stride=2)

        # The feature size depends on the input size through strides, padding and pooling
        # (640 for 32x32, 1440 for 84x84 with first_stride=2); a dummy pass gets it exactly.
        # Two samples, because batch norm in training mode needs more than one value per channel.
        with torch.no_grad():
            feature_dim = self.features(torch.zeros(2, in_channels, input_size, input_size)).shape[1]
        self.classifier = MultiHeadClassifier(feature_dim, initial_out_features=classes_per_task, masking=False)
        # MultiTaskModule.forward sizes mixed-task outputs by this; it is otherwise only set on adaptation.
        self.max_class_label = classes_per_task

    @staticmethod
    def _make_stage(in_planes: int, planes: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1))

    def features(self, x: Tensor) -> Tensor:
        """The flattened representation that the task heads read.

        :param x: ``(N, in_channels, input_size, input_size)`` images.
        """
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(F.avg_pool2d(out, 2), 1)

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        """Logits of the head of ``task_label``.

        :param x: images of a single task.
        :param task_label: the task they belong to.
        """
        return self.classifier(self.features(x), task_label)


def reduced_resnet18(
    classes_per_task: int = 5,
    nf: int = 20,
    in_channels: int = 3,
    input_size: int = 32,
    first_stride: int = 1,
) -> ReducedResNet18:
    """Build the paper's reduced ResNet18.

    Use the defaults for 5-Datasets (32x32, 10 classes per task: pass ``classes_per_task=10``) and
    ``input_size=84, first_stride=2`` for miniImageNet (5 classes per task).

    :param classes_per_task: number of outputs of each task head.
    :param nf: base width of the network.
    :param in_channels: channels of the input images.
    :param input_size: height (= width) of the input images.
    :param first_stride: stride of the first convolution.
    """
    return ReducedResNet18(classes_per_task, nf, in_channels, input_size, first_stride)
