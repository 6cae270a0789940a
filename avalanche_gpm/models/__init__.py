"""The networks of the GPM paper: an MLP for Permuted MNIST, AlexNet for CIFAR-100, and the reduced
ResNet18 for 5-Datasets and miniImageNet."""

from avalanche_gpm.models.alexnet import AlexNet, alexnet
from avalanche_gpm.models.mlp import PermutedMNISTMLP, pmnist_mlp
from avalanche_gpm.models.resnet import BasicBlock, ReducedResNet18, reduced_resnet18

__all__ = [
    "AlexNet",
    "BasicBlock",
    "PermutedMNISTMLP",
    "ReducedResNet18",
    "alexnet",
    "pmnist_mlp",
    "reduced_resnet18",
]
