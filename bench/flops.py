"""Multiply-adds per image of an ONNX graph, from its layers' shapes (onnx shape inference).

    python -m bench.flops models/vae/decoder.onnx

Conv: N * C_out * H_out * W_out * (C_in / groups) * kH * kW
ConvTranspose: N * C_in * H_in * W_in * (C_out / groups) * kH * kW (each input pixel is
    scattered through the kernel to every output channel)
Gemm / MatMul: M * K * N
Element-wise work (bias, LeakyReLU, Sigmoid) is listed apart: it is memory traffic, a few
operations per output value, and under 1% of the multiply-adds here. FLOPs = 2 x MACs.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ELEMENTWISE = {"LeakyRelu", "Relu", "Sigmoid", "Add", "Mul", "Exp", "Tanh"}


def _shapes(model) -> dict[str, list[int]]:
    from onnx import shape_inference

    graph = model.graph
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1  # one image: the figures are per image
    inferred = shape_inference.infer_shapes(model).graph
    shapes: dict[str, list[int]] = {}
    for value in [*inferred.input, *inferred.value_info, *inferred.output]:
        shapes[value.name] = [d.dim_value for d in value.type.tensor_type.shape.dim]
    for init in inferred.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return a.i if a.type == a.INT else list(a.ints)
    return default


def count(path: Path) -> dict:
    """Per-layer and total multiply-adds for one image through the graph at `path`."""
    import onnx

    model = onnx.load(str(path))
    shapes = _shapes(model)
    layers, macs, elementwise = [], 0, 0
    for node in model.graph.node:
        op = node.op_type
        out = shapes.get(node.output[0], [])
        if op == "Conv":
            weight = shapes[node.input[1]]  # (C_out, C_in/g, kH, kW)
            n = math.prod(out) * math.prod(weight[1:])
        elif op == "ConvTranspose":
            weight = shapes[node.input[1]]  # (C_in, C_out/g, kH, kW)
            n = math.prod(shapes[node.input[0]]) * math.prod(weight[1:])
        elif op in ("Gemm", "MatMul"):
            a = shapes[node.input[0]]
            b = shapes[node.input[1]]
            k = a[-1] if not (op == "Gemm" and _attr(node, "transA", 0)) else a[-2]
            n = math.prod(out) * k
            del b
        else:
            if op in ELEMENTWISE and out:
                elementwise += math.prod(out)
            continue
        macs += n
        layers.append({"op": op, "name": node.name, "output": out, "macs": n})
    return {
        "file": str(path),
        "macs_per_image": macs,
        "flops_per_image": 2 * macs,
        "elementwise_ops_per_image": elementwise,
        "layers": layers,
    }


def analytic(config=None) -> dict[str, int]:
    """The same counts from the architecture's hyper-parameters (training.config.ModelConfig),
    as a cross-check of the graph count."""
    from training.config import ModelConfig

    config = config or ModelConfig()
    c, h, w = config.input_shape
    enc = 0
    for filters, k, s in zip(
        config.encoder_conv_filters,
        config.encoder_conv_kernel_size,
        config.encoder_conv_strides,
        strict=True,
    ):
        h, w = math.ceil(h / s), math.ceil(w / s)
        enc += filters * h * w * c * k * k
        c = filters
    flat = c * h * w
    heads = 2 if config.kind == "vae" else 1
    enc += heads * flat * config.z_dim
    dec = config.z_dim * flat
    for filters, k, s in zip(
        config.decoder_conv_t_filters,
        config.decoder_conv_t_kernel_size,
        config.decoder_conv_t_strides,
        strict=True,
    ):
        dec += c * h * w * filters * k * k
        h, w, c = h * s, w * s, filters
    return {"encoder": enc, "decoder": dec}


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        result = count(Path(arg))
        print(json.dumps({k: v for k, v in result.items() if k != "layers"}))
        for layer in result["layers"]:
            print(f"  {layer['op']:<14} {layer['output']!s:<18} {layer['macs']:>12,}")
