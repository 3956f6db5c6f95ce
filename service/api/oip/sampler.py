"""`{name}-sampler`: GET /sample for Open Inference Protocol clients.

    inputs   count        INT64 [1]   how many images, 1..VAE_MAX_BATCH (as /sample's n)
             seed         INT64 [1]   optional: same seed, same tensors (as /sample's seed)
             temperature  FP32  [1]   optional, 0..10 (default 1)
             prior        BYTES [1]   optional: "normal" or "fitted" (default: the model's)
             label        INT64 [1]   optional: that label's fitted mixture (implies fitted)
    outputs  <decoder.output>  FP32 [-1, C, H, W]   the decoded images, the model's convention
             z                 FP32 [-1, z_dim]      the latent vectors they came from

Each setting is one element ([1], or [1, 1] as a Triton client with max_batch_size sends it);
the images' batch axis is `count`. The response's `parameters` say which prior drew z (as
/sample's X-Prior) and the label. The same request with the same seed gives the same z as
GET /sample?n=count&seed=...: both draw through Model.sample_z. Errors are 400s with the REST
API's words (service/api/priors.py). Triton has no such model: `vae-triton` leaves it out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service.api.deps import max_images
from service.api.images import MAX_TEMPERATURE
from service.api.oip.codec import (
    InferRequest,
    RequestInput,
    bad_request,
    decode_bytes,
    decode_numeric,
)
from service.api.oip.models import DEFAULT_VERSION, Call, OipModel, TensorSpec
from service.api.priors import PriorRequestError, choose_prior, resolve_label
from service.api.scheduling import WorkSize, small_output
from service.api.schemas import PriorName
from service.inference.model import Model
from service.process.settings import Settings

SAMPLER_PLATFORM = "sampler"
INT64_MAX = 2**63 - 1
_SETTINGS = (
    TensorSpec("count", "INT64", (1,)),
    TensorSpec("seed", "INT64", (1,), optional=True),
    TensorSpec("temperature", "FP32", (1,), optional=True),
    TensorSpec("prior", "BYTES", (1,), optional=True),
    TensorSpec("label", "INT64", (1,), optional=True),
)


@dataclass(frozen=True)
class SamplerModel(OipModel):
    """A model's sampler: settings in (one element each), images and z out."""

    @property
    def platform(self) -> str:
        return SAMPLER_PLATFORM

    def check(self, request: InferRequest, settings: Settings) -> Call:
        given = self.given(request)
        specs = {t.name: t for t in self.inputs}
        values = {name: self._value(specs[name], tensor) for name, tensor in given.items()}
        count = int(values["count"])
        limit = max_images(self.model, settings.max_batch)
        if not 1 <= count <= limit:
            raise bad_request(f"input 'count' must be 1..{limit} for model {self.model.name!r}")
        seed = values.get("seed")
        if seed is not None and seed < 0:
            raise bad_request("input 'seed' must be 0 or more")
        temperature = float(values.get("temperature", 1.0))
        if not 0.0 <= temperature <= MAX_TEMPERATURE:
            raise bad_request(f"input 'temperature' must lie in 0..{MAX_TEMPERATURE:g}")
        try:
            label = values.get("label")
            number = None if label is None else resolve_label(self.model, int(label))
            prior = choose_prior(self.model, values.get("prior"), number)
        except PriorRequestError as error:
            raise bad_request(f"input {error.param!r}: {error.message}") from None
        inputs = {
            "count": count,
            "seed": None if seed is None else int(seed),
            "temperature": temperature,
            "prior": prior,
            "label": number,
        }
        parameters: dict[str, Any] = {"prior": prior.value}
        if number is not None:
            parameters["label"] = number
        size = WorkSize(images=count, small=small_output(count, 1, self.model.input_shape))
        return Call(self, request, inputs, self._outputs(request), size, parameters)

    def _value(self, spec: TensorSpec, tensor: RequestInput) -> Any:
        """One setting's single element: an int, a float or a PriorName."""
        where = f"input {spec.name!r} of model {self.name!r}"
        if tensor.datatype != spec.datatype:
            raise bad_request(
                f"{where} has datatype {spec.datatype}, the request says {tensor.datatype}"
            )
        if tuple(tensor.shape) not in ((1,), (1, 1)):
            raise bad_request(
                f"{where} has shape [1] (one value), the request says {list(tensor.shape)}"
            )
        if spec.datatype == "BYTES":
            (text,) = decode_bytes(tensor)
            names = [p.value for p in PriorName]
            if text.decode("utf-8", "replace") not in names:
                raise bad_request(f"{where} must be one of {names}")
            return PriorName(text.decode())
        limit = MAX_TEMPERATURE if spec.datatype == "FP32" else INT64_MAX
        return decode_numeric(tensor, limit).reshape(-1)[0].item()

    def run(
        self, inputs: dict[str, Any], request: InferRequest, settings: Settings
    ) -> dict[str, np.ndarray]:
        model = self.model
        rng = np.random.default_rng(inputs["seed"])
        z = model.sample_z(
            inputs["count"], rng, inputs["temperature"], inputs["prior"].value, inputs["label"]
        )
        return {model.decoder_output: model.decode_batch(z), self.outputs[1].name: z}


def sampler_of(model: Model) -> SamplerModel:
    """A model's `{name}-sampler`, from its metadata."""
    meta = model.metadata
    z_name = "z" if meta.decoder.output != "z" else "latent"
    return SamplerModel(
        f"{model.name}-sampler",
        meta.version or DEFAULT_VERSION,
        "sampler",
        model,
        _SETTINGS,
        (
            TensorSpec(meta.decoder.output, "FP32", (-1, *meta.input.shape)),
            TensorSpec(z_name, "FP32", (-1, meta.z_dim)),
        ),
    )
