"""The README documents every setting and every endpoint the service has."""

from __future__ import annotations

from pathlib import Path

from service.process.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_setting_is_in_the_configuration_table() -> None:
    text = README.read_text()
    table = text[text.index("## Configuration") :]
    for name in Settings.model_fields:
        assert f"| `VAE_{name.upper()}` |" in table, name


def test_every_endpoint_has_a_curl_example(client) -> None:
    text = README.read_text()
    api = text[text.index("## API") : text.index("## Configuration")]
    for path in client.get("/openapi.json").json()["paths"]:
        example = path.replace("{name}", "vae").replace("{file}", "training_curves.png")
        example = example.replace("{version}", "$VERSION")  # /v2: the shell variable
        assert f"localhost:8000{example}" in api, path
