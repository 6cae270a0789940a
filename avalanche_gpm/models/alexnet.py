"""The 5-layer AlexNet of the GPM paper's 10-split CIFAR-100 experiments.

Taken from the paper: three convolutions with 64, 128 and 256 filters of size 4x4, 3x3 and 2x2,
two fully connected layers of 2048 units, batch normalisation after every layer, 2x2 max pooling
after every convolution, dropout 0.2 after the first two convolutions and 0.5 after the rest, no
biases, and one classifier head per task.

Not taken from the paper: the order of operations inside a block (here convolution, batch norm,
ReLU, max pooling, dropout) follows common ports of the network. The heads are Avalanche
:class:`~avalanche.models.MultiHeadClassifier` heads, which have a bias where the paper's have
none; they are never projected, so the bias does not affect what GPM protects.

Batch norm layers keep no running statistics: they always normalise with the statistics of the
current batch, so nothing in them drifts while later tasks are learned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from avalanche.models import MultiHeadClassifier, MultiTaskModule
from torch import Tensor, nn


class AlexNet(MultiTaskModule):
    """AlexNet-like backbone with one head per task.

    :param classes_per_task: number of outputs of each task head.
    :param in_channels: channels of the input images.
    :param input_size: height (= width) of the input images; sets the input size of ``fc1``.
    """

    def __init__(self, classes_per_task: int = 10, in_channels: int = 3, input_size: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=4, bias=False)
        self.bn1 = nn.BatchNorm2d(64, track_running_stats=False)
        self.conv2 = nn.Conv2d(64, 128, kernel_size=3, bias=False)
        self.bn2 = nn.BatchNorm2d(128, track_running_stats=False)
        self.conv3 = nn.Conv2d(128, 256, kernel_size=2, bias=False)
        self.bn3 = nn.BatchNorm2d(256, track_running_stats=False)
        self.pool = nn.MaxPool2d(2)
        self.drop1 = nn.Dropout(0.2)
        self.drop2 = nn.Dropout(0.5)

        # Each block is a valid convolution followed by a 2x2 pooling: 32 -> 14 -> 6 -> 2.
        side = input_size
        for conv in (self.conv1, self.conv2, self.conv3):
            side = (side - conv.kernel_size[0] + 1) // 2
        if side < 1:
            raise ValueError(f"AlexNet: input_size={input_size} is too small for three conv/pool blocks")

        self.fc1 = nn.Linear(256 * side * side, 2048, bias=False)
        self.bn4 = nn.BatchNorm1d(2048, track_running_stats=False)
        self.fc2 = nn.Linear(2048, 2048, bias=False)
        self.bn5 = nn.BatchNorm1d(2048, track_running_stats=False)
        self.classifier = MultiHeadClassifier(2048, initial_out_features=classes_per_task, masking=False)
        # MultiTaskModule.forward sizes mixed-task outputs by this; it is otherwise only set on adaptation.
        self.max_class_label = classes_per_task

    def features(self, x: Tensor) -> Tensor:
        """The 2048-dimensional representation that the task heads read.

        :param x: ``(N, in_channels, input_size, input_size)`` images.
        """
        x = self.drop1(self.pool(F.relu(self.bn1(self.conv1(x)))))
        x = self.drop1(self.pool(F.relu(self.bn2(self.conv2(x)))))
        x = self.drop2(self.pool(F.relu(self.bn3(self.conv3(x)))))
        x = torch.flatten(x, 1)
        x = self.drop2(F.relu(self.bn4(self.fc1(x))))
        return self.drop2(F.relu(self.bn5(self.fc2(x))))

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        """Logits of the head of ``task_label``.

        :param x: images of a single task.
        :param task_label: the task they belong to.
        """
        return self.classifier(self.features(x), task_label)


def alexnet(classes_per_task: int = 10, in_channels: int = 3, input_size: int = 32) -> AlexNet:
    """Build the paper's AlexNet for task-incremental CIFAR-100 (10 classes per task by default).

    :param classes_per_task: number of outputs of each task head.
    :param in_channels: channels of the input images.
    :param input_size: height (= width) of the input images.
    """
    return AlexNet(classes_per_task, in_channels, input_size)
