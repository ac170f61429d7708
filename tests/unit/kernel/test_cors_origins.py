"""TOKENFORGE_CORS_ORIGINS: the web origins whose pages may call the API, none by
default; an entry a browser would never send as its Origin is refused at start."""

from __future__ import annotations

import pytest

from tokenforge.config import Settings, parse_cors_origins


def test_none_by_default() -> None:
    assert Settings().cors_origins == ()
    assert parse_cors_origins("") == ()


def test_a_comma_separated_list_of_origins() -> None:
    text = " https://app.example.com, http://localhost:5173 ,,"
    assert parse_cors_origins(text) == ("https://app.example.com", "http://localhost:5173")
    assert parse_cors_origins("*") == ("*",)


@pytest.mark.parametrize(
    "entry",
    ["app.example.com", "https://app.example.com/", "https://app.example.com/v1", "ftp://x.y"],
)
def test_what_is_not_an_origin_is_refused_naming_it(entry: str) -> None:
    with pytest.raises(ValueError, match="is not an origin") as caught:
        parse_cors_origins(f"https://ok.example,{entry}")
    assert repr(entry) in str(caught.value)


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENFORGE_CORS_ORIGINS", "https://app.example.com")
    assert Settings.from_env().cors_origins == ("https://app.example.com",)
