"""Where ``torch.linalg.eigh`` does not converge, and what GPM's SVD fallback gives instead.

torchvision's ``resnet18(num_classes=10)`` on 50 random 32x32 inputs: each layer4 convolution's
input Gram matrix is 4608 x 4608 of rank at most 50 (one padded 3x3 patch per sample at 1x1
resolution). For each layer the script reports whether plain ``eigh`` converges, the time of
:func:`avalanche_gpm.subspace.principal_directions` (which falls back to the SVD), the
orthonormality error of its directions, and the largest difference of its top energies from
numpy's ``eigvalsh`` (relative to the top energy). The outcome depends on the LAPACK build and
thread count; seen here with 2 threads: ``layer4.1.conv1`` fails to converge.

    python -m benchmarks.eigh_fallback
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torchvision

from avalanche_gpm.capture import GramRecorder
from avalanche_gpm.subspace import principal_directions


def main() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    layers = {name: module for name, module in model.named_modules() if name.startswith("layer4") and "conv" in name}
    recorder = GramRecorder(layers, {name: 50 for name in layers})
    with torch.no_grad(), recorder.recording():
        model(torch.randn(50, 3, 32, 32))
    print("| layer | dim | plain eigh | principal_directions (s) | orthonormality error | top-50 energy diff vs numpy |")
    print("|---|---:|---|---:|---:|---:|")
    for name, gram in recorder.grams.items():
        gram = gram.double()
        gram = (gram + gram.T) / 2
        try:
            torch.linalg.eigh(gram)
            plain = "converges"
        except torch.linalg.LinAlgError:
            plain = "**fails**"
        start = time.perf_counter()
        directions, energies = principal_directions(gram)
        seconds = time.perf_counter() - start
        error = float((directions.T @ directions - torch.eye(directions.shape[1], dtype=directions.dtype)).abs().max())
        reference = np.sort(np.linalg.eigvalsh(gram.numpy()))[::-1]
        diff = float(np.max(np.abs(reference[:50] - energies[:50].numpy())) / reference[0])
        print(f"| {name} | {gram.shape[0]} | {plain} | {seconds:.1f} | {error:.1e} | {diff:.1e} |")


if __name__ == "__main__":
    main()
