"""The 3-layer fully connected network of the GPM paper's Permuted MNIST experiments.

Two hidden layers of 100 units with ReLU and a single 10-way output shared by all tasks (the
tasks are permutations of the same ten digits). No layer has a bias, so every weight acts on the
layer's input alone and GPM can protect each layer with the span of its inputs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class PermutedMNISTMLP(nn.Module):
    """``in_features -> hidden -> hidden -> num_classes`` MLP without biases.

    :param in_features: size of a flattened input sample.
    :param hidden: width of both hidden layers.
    :param num_classes: number of outputs of the shared head.
    """

    def __init__(self, in_features: int = 784, hidden: int = 100, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, hidden, bias=False)
        self.fc3 = nn.Linear(hidden, num_classes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # Images arrive as (N, 1, 28, 28); the network sees one vector per sample.
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def pmnist_mlp(in_features: int = 784, hidden: int = 100, num_classes: int = 10) -> PermutedMNISTMLP:
    """Build the Permuted MNIST network of the paper (784-100-100-10, no biases).

    :param in_features: size of a flattened input sample.
    :param hidden: width of both hidden layers.
    :param num_classes: number of outputs of the shared head.
    """
    return PermutedMNISTMLP(in_features, hidden, num_classes)
