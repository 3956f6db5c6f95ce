"""Inference: the model format (`format`), loading and checking model folders (`registry`),
onnxruntime sessions (`sessions`), and one loaded model with the numpy around it (`model`).
No HTTP here, and never torch."""
