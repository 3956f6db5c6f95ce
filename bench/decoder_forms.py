"""An experiment: the same decoder written without ConvTranspose, timed in onnxruntime.

    python -m bench.decoder_forms

onnxruntime runs the encoder's Conv layers at ~105 GFLOP/s per core here but the decoder's
ConvTranspose layers at ~65 (bench/compute.py): Conv gets fused, blocked (NCHWc) kernels,
ConvTranspose a GEMM then col2im. A transposed convolution is an ordinary convolution in
disguise, so the decoder can be exported as Conv layers computing the same function:

- stride 1: Conv with the kernel flipped and its in/out channels swapped, padding k-1-p;
- stride 2 (k=3, padding 1, output_padding 1): the four output phases (even/odd row x even/odd
  column) are four small Convs on the input (1x1, 1x2, 2x1 and 2x2 taps of the kernel: the same
  9 multiply-adds per output pixel), interleaved by a pixel shuffle (ONNX DepthToSpace).

This script builds these forms from the VAE's weights (the training checkpoint, or the
untrained model), checks them against the all-ConvTranspose decoder to 1e-4, and times them at
batch 1 and 16 with the service's session settings. `vae-export` writes the form that wins here
(training/export.py: `conv_form_decoder`, stride-1 layers as Conv); the others are the evidence
for stopping there.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import baseline_run, warn_if_busy, write_result

EXPORTED = "all ConvTranspose (the book's layers)"


def conv_form(decoder, last: bool = False):
    """A torch module computing `decoder` (training.model.Decoder) with its ConvTranspose layers
    as Conv: the stride-1 and stride-2 ones, and the 1-channel output layer only if `last` (a
    1-channel Conv fills 1 of onnxruntime's 16-channel blocks). The exported form, stride-1
    layers only, is training.export.conv_form_decoder."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from training.export import as_conv

    class Stride2(nn.Module):
        """ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1) as 4 phase convs."""

        def __init__(self, t: nn.ConvTranspose2d):
            super().__init__()
            assert t.kernel_size == (3, 3) and t.stride == (2, 2) and t.padding == (1, 1)
            assert t.output_padding == (1, 1)
            w = t.weight.permute(1, 0, 2, 3)  # (out, in, ky, kx)
            cin, cout = t.in_channels, t.out_channels

            def conv(kh: int, kw: int, taps) -> nn.Conv2d:
                c = nn.Conv2d(cin, cout, (kh, kw), bias=True)
                with torch.no_grad():
                    c.weight.copy_(taps.reshape(cout, cin, kh, kw))
                    assert c.bias is not None and t.bias is not None  # both made with bias
                    c.bias.copy_(t.bias)
                return c

            # y[2m+a, 2n+b] from x[m + dy, n + dx]: the kernel taps each phase uses.
            self.p00 = conv(1, 1, w[:, :, 1:2, 1:2])
            self.p01 = conv(1, 2, torch.stack([w[:, :, 1, 2], w[:, :, 1, 0]], -1)[:, :, None])
            self.p10 = conv(2, 1, torch.stack([w[:, :, 2, 1], w[:, :, 0, 1]], -1)[..., None])
            self.p11 = conv(
                2,
                2,
                torch.stack(
                    [
                        torch.stack([w[:, :, 2, 2], w[:, :, 2, 0]], -1),
                        torch.stack([w[:, :, 0, 2], w[:, :, 0, 0]], -1),
                    ],
                    -2,
                ),
            )

        def forward(self, x):
            n, _, h, w = x.shape
            xp = F.pad(x, (0, 1, 0, 1))
            phases = [
                self.p00(x),
                self.p01(xp[:, :, :h, :]),
                self.p10(xp[:, :, :, :w]),
                self.p11(xp),
            ]
            y = torch.stack(phases, dim=2)  # (N, C, 4, H, W): channel c*4 + a*2 + b
            return F.pixel_shuffle(y.reshape(n, -1, h, w), 2)

    class ConvDecoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = decoder.dense
            self.start_shape = decoder.start_shape
            self.output_shape = decoder.output_shape
            layers = []
            for layer in decoder.conv:
                if not isinstance(layer, nn.ConvTranspose2d) or (
                    layer.out_channels == 1 and not last
                ):
                    layers.append(layer)
                elif layer.stride == (1, 1):
                    layers.append(as_conv(layer))
                else:
                    layers.append(Stride2(layer))
            self.conv = nn.Sequential(*layers)

        def forward(self, z):
            x = self.conv(self.dense(z).view(-1, *self.start_shape))
            _, h, w = self.output_shape
            return x[:, :, :h, :w]

    return ConvDecoder().eval()


def export(module, path: Path, z_dim: int) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(2, z_dim),),
            str(path),
            input_names=["z"],
            output_names=["image"],
            dynamic_axes={"z": {0: "batch"}, "image": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def rate(session, z: np.ndarray, seconds: float) -> float:
    for _ in range(3):
        session.run(None, {"z": z})
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {"z": z})
        n += 1
    return n * len(z) / (time.perf_counter() - start)


def run(seconds: float = 1.0, out_dir: Path | None = None) -> dict:
    import onnxruntime as ort
    import torch

    from service.inference.sessions import session_options
    from training.config import ModelConfig
    from training.export import conv_form_decoder
    from training.model import build_model
    from training.train import load_trained_model

    quiet = warn_if_busy()
    run_dir = baseline_run()
    if run_dir:
        model, _, _ = load_trained_model(run_dir)
        source = f"{run_dir}/checkpoint.pt"
    else:
        torch.manual_seed(0)
        model, source = build_model(ModelConfig(kind="vae")).eval(), "untrained full-size VAE"
    z_dim = model.config.z_dim
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-decoder-") as tmp:
        forms = {
            EXPORTED: model.decoder,
            "stride-1 layers as Conv (as exported)": conv_form_decoder(model.decoder),
            "+ stride-2 as 4 phase Convs": conv_form(model.decoder),
            "+ 1-channel output as Conv": conv_form(model.decoder, last=True),
        }
        paths = {name: Path(tmp) / f"decoder{i}.onnx" for i, name in enumerate(forms)}
        for name, module in forms.items():
            export(module, paths[name], z_dim)
        sessions = {
            name: ort.InferenceSession(
                str(path), session_options(1), providers=["CPUExecutionProvider"]
            )
            for name, path in paths.items()
        }
        z = np.random.default_rng(0).standard_normal((64, z_dim)).astype(np.float32)
        reference = sessions[EXPORTED].run(None, {"z": z})[0]
        worst = max(
            float(np.abs(session.run(None, {"z": z})[0] - reference).max())
            for session in sessions.values()
        )
        if not worst <= 1e-4:
            raise SystemExit(f"a conv form differs from the decoder by {worst:.2e}")
        ops = {
            name: sorted({node.op_type for node in __import__("onnx").load(str(p)).graph.node})
            for name, p in paths.items()
        }
        for batch in (1, 16):
            for name, session in sessions.items():
                images = rate(session, z[:batch], seconds)
                rows.append({"form": name, "batch": batch, "images_per_s": round(images, 1)})
                print(f"  {name:<30} b={batch:<3} {images:8.0f} images/s (1 thread)")
    by = {(r["form"], r["batch"]): r["images_per_s"] for r in rows}
    speedup = {
        f"{name} b={b}": round(by[(name, b)] / by[(EXPORTED, b)], 2)
        for name in forms
        if name != EXPORTED
        for b in (1, 16)
    }
    print(f"  speed-up: {speedup}; largest difference {worst:.1e}")
    data = {
        "quiet_machine": quiet,
        "weights": source,
        "max_abs_difference": worst,
        "ops": ops,
        "rows": rows,
        "speedup": speedup,
    }
    write_result("decoder_forms", data, out_dir)
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--out-dir", type=Path, default=None)
    args = p.parse_args(argv)
    run(args.seconds, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
