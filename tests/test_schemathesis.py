"""Schemathesis against the app's own OpenAPI schema, in process (ASGI): every operation,
a few generated requests each, no server error and every response as the schema says
(status documented, content type, headers, body schema).

One check is left out: `positive_data_acceptance` (a schema-valid request must be a 2xx).
Some valid-looking requests are rightly refused for reasons no schema can say: an image with
no digit in it (422), latent vectors whose length is not the chosen model's z_dim (422).

Bounded: a handful of examples per operation, derandomized. (Each operation is a pytest
parameter of its own; schemathesis' lazy `from_fixture` mode does not run under pytest 9.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import positive_data_acceptance

from service.app import create_app
from service.process.settings import Settings


def _app(model_dir=None):
    return create_app(Settings(model_dir=model_dir or "models", access_log=False, max_batch=16))


# The schema only (app.openapi() needs no models); calls go to `live_app` once it is started.
SCHEMA = schemathesis.openapi.from_dict(_app().openapi())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


@pytest.fixture(scope="module")
def live_app(model_dir):
    """The app with its lifespan entered (models loaded), for the generated calls."""
    from fastapi.testclient import TestClient

    app = _app(model_dir)
    with TestClient(app):
        yield app


def test_every_endpoint_is_in_the_schema() -> None:
    seen = {(op.method.upper(), op.path) for op in OPERATIONS}
    for expected in [
        ("POST", "/encode"),
        ("POST", "/encode/batch"),
        ("POST", "/decode"),
        ("GET", "/sample"),
        ("POST", "/reconstruct"),
        ("POST", "/interpolate"),
        ("GET", "/manifold"),
        ("POST", "/score"),
        ("POST", "/score/batch"),
        ("GET", "/models/{name}/figures/{file}"),
        ("GET", "/readyz"),
    ]:
        assert expected in seen, (expected, seen)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "operation", OPERATIONS, ids=[f"{op.method.upper()} {op.path}" for op in OPERATIONS]
)
def test_operation_conforms_to_its_schema(operation, live_app) -> None:
    strategy = operation.as_strategy()

    @settings(
        max_examples=15,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def check(data) -> None:
        case = data.draw(strategy)
        case.call_and_validate(app=live_app, excluded_checks=[positive_data_acceptance])

    check()
