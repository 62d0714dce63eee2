"""The one `Authorization: Bearer <token>` parser, shared by the HTTP API and the websocket
handshake."""

from __future__ import annotations

import pytest

from web.auth import parse_bearer


def test_it_finds_no_token_without_a_header() -> None:
    assert parse_bearer(None) is None


@pytest.mark.parametrize("header", ["Bearer abc", "bearer abc", "Bearer  abc "])
def test_it_reads_the_token_whatever_the_schemes_case_and_the_spaces(header: str) -> None:
    assert parse_bearer(header) == "abc"


@pytest.mark.parametrize("header", ["Basic abc", "Bearer"])
def test_another_scheme_or_a_missing_token_is_an_empty_token_not_no_header(header: str) -> None:
    # "" makes the caller refuse the request; None would let it fall back to the session.
    assert parse_bearer(header) == ""
