"""Which prior a sampling request gets, and what /models says about each model's priors.

Shared by GET /sample (service/api/images.py and its fast path, hot_routes.py), /models
(metadata.py) and the Open Inference Protocol's sampler (oip/models.py): each words the
`PriorRequestError`s here as its own errors (a 422 with `detail`, a 400 with `error`).
"""

from __future__ import annotations

import re

import numpy as np

from service.api.schemas import (
    LabelInfo,
    LabelMixture,
    MixtureComponent,
    PriorBody,
    PriorName,
    PriorsInfo,
)
from service.inference.model import Model
from service.inference.prior import Mixture

_INTEGER = re.compile(r"-?[0-9]{1,9}")


class PriorRequestError(ValueError):
    """A sampling request the model cannot answer: `param` names the parameter at fault."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param
        self.message = message


def known_labels(model: Model) -> str:
    """The labels of a model's per-label fits, as an error message lists them."""
    if model.prior is None:
        return f"model {model.name!r} has no fitted prior, so no labels"
    if not model.prior.per_label:
        return f"model {model.name!r} has a fitted prior without per-label fits, so no labels"
    names = [
        str(label) if name == str(label) else f"{label} ({name})"
        for label, name in model.label_names.items()
    ]
    return f"known labels of model {model.name!r}: {', '.join(names)}"


def resolve_label(model: Model, value: str | int) -> int:
    """A label number from a request: an integer is the label number, anything else a name
    from the model's label_names (exactly, else ignoring case). PriorRequestError naming the
    known labels when the model has no fit for it."""
    names = model.label_names
    if not names:
        raise PriorRequestError(
            "label", f"sampling by label needs per-label fits: {known_labels(model)}"
        )
    if isinstance(value, int) or _INTEGER.fullmatch(value):
        label = int(value)
        if label in names:
            return label
    else:
        exact = [k for k, name in names.items() if name == value]
        folded = [k for k, name in names.items() if name.casefold() == value.casefold()]
        for found in (exact, folded):
            if len(found) == 1:
                return found[0]
    raise PriorRequestError("label", f"no label {str(value)!r:.40}; {known_labels(model)}")


def choose_prior(model: Model, prior: PriorName | None, label: int | None = None) -> PriorName:
    """The prior a request gets: the one it names, else fitted for a label, else the model's
    default (metadata prior.default). PriorRequestError when the model has no fitted prior or
    the request asks for a label under N(0, I)."""
    if prior is None:
        prior = PriorName.fitted if label is not None else PriorName(model.default_prior)
    if prior is PriorName.fitted and model.prior is None:
        raise PriorRequestError(
            "prior",
            f"model {model.name!r} has no fitted prior; its priors: {model.priors}",
        )
    if label is not None and prior is PriorName.normal:
        raise PriorRequestError(
            "label",
            "a label samples that label's fitted mixture: use prior=fitted or leave prior out",
        )
    return prior


def fitted_labels(model: Model) -> tuple[int, ...]:
    """The labels with a per-label fit; PriorRequestError("per_label") when there are none."""
    if model.prior is None or not model.prior.per_label:
        raise PriorRequestError(
            "per_label", f"one row per label needs per-label fits: {known_labels(model)}"
        )
    return model.prior.labels


def per_label_z(
    model: Model, k: int, seed: int | None, temperature: float
) -> list[tuple[int, np.ndarray]]:
    """K points from each label's fitted mixture, in label order, from one seeded generator."""
    rng = np.random.default_rng(seed)
    return [
        (label, model.sample_z(k, rng, temperature, "fitted", label))
        for label in fitted_labels(model)
    ]


def label_infos(model: Model) -> list[LabelInfo]:
    if model.prior is None:
        return []
    return [
        LabelInfo(label=label, name=model.label_names[label], share=share)
        for label, share in zip(model.prior.labels, model.prior.shares, strict=True)
    ]


def priors_info(model: Model) -> PriorsInfo:
    """/models' `priors` of one model."""
    return PriorsInfo(
        available=[PriorName(p) for p in model.priors],
        default=PriorName(model.default_prior),
        per_label=model.prior is not None and model.prior.per_label,
        labels=label_infos(model),
    )


def _components(mixture: Mixture) -> list[MixtureComponent]:
    return [
        MixtureComponent(weight=float(w), mean=m.tolist(), covariance=c.tolist())
        for w, m, c in zip(mixture.weights, mixture.means, mixture.covariances, strict=True)
    ]


def prior_body(model: Model) -> PriorBody:
    """GET /models/{name}/prior of a model with a fitted prior."""
    prior, spec = model.prior, model.metadata.prior
    assert prior is not None and spec is not None
    labels = [
        LabelMixture(**info.model_dump(), components=_components(prior.mixture(info.label)))
        for info in label_infos(model)
    ]
    return PriorBody(
        z_dim=model.z_dim,
        fitted_on=spec.fitted_on,
        default=PriorName(model.default_prior),
        components=_components(prior.overall),
        labels=labels,
    )
