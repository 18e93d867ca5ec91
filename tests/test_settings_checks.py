"""Settings are checked when read: one line per wrong value, naming it, never repeating a secret."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from bot.settings import Settings
from generation.settings import GenerationSettings, settings_error_lines

log = logging.getLogger(__name__)

SECRET = "hunter2-do-not-print"


def errors(model: type = Settings, **values: object) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        model(_env_file=None, **values)
    return list(settings_error_lines(caught.value, model))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"web_port": 99999}, "WEB_PORT: must be a port number from 1 to 65535"),
        ({"web_port": -1}, "WEB_PORT: must be a port number"),
        ({"api_keys": SECRET}, 'API_KEYS: must be a JSON object, e.g. API_KEYS={"name": "secret"}'),
        ({"api_keys": f'["{SECRET}"]'}, 'API_KEYS: must be a JSON object, e.g. API_KEYS={"name": "secret"}'),
        ({"api_keys": '{"ci": 5}'}, "API_KEYS (entry 'ci'): Input should be a valid string"),
        (
            {"priority_roles": "Patron"},
            'PRIORITY_ROLES: must be a JSON object, e.g. PRIORITY_ROLES={"Patron": 10}',
        ),
        ({"public_url": "example.org"}, "PUBLIC_URL: must start with http:// or https://"),
        ({"public_url": "http://:8080"}, "PUBLIC_URL: names no host"),
        ({"discord_api_base": "http://h:99999"}, "DISCORD_API_BASE: is not a valid URL"),
        ({"discord_gateway_url": "http://h"}, "DISCORD_GATEWAY_URL: must start with ws:// or wss://"),
        ({"queue_url": f"http://:{SECRET}@h:6379"}, "QUEUE_URL: must start with redis://"),
        ({"results_dir": " "}, "RESULTS_DIR: names no folder"),
        ({"log_level": "chatty"}, "LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        ({"max_queue": 0}, "MAX_QUEUE: Input should be greater than or equal to 1 (got '0')"),
    ],
)
def test_a_wrong_value_is_one_line_naming_the_setting(values: dict[str, object], expected: str) -> None:
    [line] = errors(**values)
    assert line.startswith(expected), line
    assert SECRET not in line


def test_generation_settings_explain_extra_models() -> None:
    [line] = errors(GenerationSettings, extra_models="sdxl")
    assert line.startswith('EXTRA_MODELS: must be a JSON object, e.g. EXTRA_MODELS={"my-model":')


def test_several_mistakes_are_one_line_each() -> None:
    lines = errors(web_port=70000, api_keys="x", public_url="nope")
    assert sorted(line.split(":")[0] for line in lines) == ["API_KEYS", "PUBLIC_URL", "WEB_PORT"]


def test_api_keys_parse_from_json_and_stay_secret() -> None:
    settings = Settings(_env_file=None, api_keys=f'{{"ci": "{SECRET}"}}')  # type: ignore[arg-type]
    assert settings.api_keys["ci"].get_secret_value() == SECRET
    assert SECRET not in repr(settings)


def test_public_url_defaults_from_web_host_and_port() -> None:
    assert Settings(_env_file=None, web_port=9000).public_url == "http://127.0.0.1:9000"  # type: ignore[call-arg]
    every_interface = Settings(_env_file=None, web_host="0.0.0.0", web_port=9000)  # type: ignore[call-arg]
    assert every_interface.public_url == "http://127.0.0.1:9000" and every_interface.public_url_derived
    assert Settings(_env_file=None, web_host="::1").public_url == "http://[::1]:8080"  # type: ignore[call-arg]
    chosen = Settings(_env_file=None, web_port=9000, public_url="https://art.example.org")  # type: ignore[call-arg]
    assert chosen.public_url == "https://art.example.org" and not chosen.public_url_derived


def test_a_derived_public_url_follows_the_port_really_bound() -> None:
    free = Settings(_env_file=None, web_port=0)  # type: ignore[call-arg]
    free.with_bound_port(43210)
    assert free.public_url == "http://127.0.0.1:43210"
    chosen = Settings(_env_file=None, web_port=0, public_url="https://art.example.org")  # type: ignore[call-arg]
    chosen.with_bound_port(43210)
    assert chosen.public_url == "https://art.example.org"
