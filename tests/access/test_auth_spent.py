"""One ID token, one sign-in (access.auth.SpentIDTokens), as plain data."""

from __future__ import annotations

import pytest

from auditcast.access.auth import SpentIDTokens
from auditcast.access.oidc import LEEWAY_S
from auditcast.errors import AccessError, InvalidToken


def test_an_id_token_signs_in_once() -> None:
    spent = SpentIDTokens()
    spent.spend("a.b.c", exp=1000, now=900)
    spent.spend("a.b.d", exp=1000, now=900)  # another token is fine
    with pytest.raises(InvalidToken, match="already used"):
        spent.spend("a.b.c", exp=1000, now=950)


def test_forgotten_only_after_the_token_itself_expired() -> None:
    spent = SpentIDTokens()
    spent.spend("t", exp=1000, now=900)
    with pytest.raises(InvalidToken):
        spent.spend("t", exp=1000, now=1000 + LEEWAY_S)  # the verifier's leeway still accepts it
    spent.spend("t", exp=2000, now=1001 + LEEWAY_S)  # expired: the verifier refuses it anyway


def test_full_memory_drops_expired_tokens_and_refuses_when_all_are_live() -> None:
    spent = SpentIDTokens(limit=2)
    spent.spend("a", exp=100, now=0)
    spent.spend("b", exp=1000, now=0)
    spent.spend("c", exp=1000, now=500)  # "a" expired and made room
    with pytest.raises(AccessError, match="too many sign-ins"):
        spent.spend("d", exp=1000, now=600)
