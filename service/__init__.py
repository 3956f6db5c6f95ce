"""The VAE inference service: exported ONNX models served over HTTP through onnxruntime.

Never imports torch. Start it with `python -m service` (or `vae-serve`, or `make serve`).
"""

__version__ = "0.1.0"
