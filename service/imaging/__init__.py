"""Imaging: decode and validate uploads (`uploads`), prepare them as the model expects
(`prepare`, MNIST-style for digits), and write images out as PNG (`png`). Numpy and Pillow
only: no HTTP, no onnxruntime."""
