"""Outgoing webhooks: the API, the SSRF guard, the signature and the retries' backoff.

Deliveries, to a real HTTP server on loopback, are tests/test_webhook_deliveries.py's.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from django.test import Client

from tests.receivers import verify
from web import actions, webhooks
from web.models import Webhook
from web.ssrf import UnsafeURL, check_url, is_public
from web.tasks import backoff


@pytest.fixture
def as_alice(alice: Any) -> dict[str, Any]:
    return {"HTTP_AUTHORIZATION": f"Bearer {actions.do_issue_token('alice')}"}


@pytest.fixture
def as_bob(bob: Any) -> dict[str, Any]:
    return {"HTTP_AUTHORIZATION": f"Bearer {actions.do_issue_token('bob')}"}


def create(client: Client, headers: dict[str, Any], data: Any) -> Any:
    return client.post("/api/webhooks", data, content_type="application/json", **headers)


def error_code(response: Any) -> str:
    assert response["Content-Type"] == "application/json"
    code: str = response.json()["error"]["code"]
    return code


# The API


def test_it_creates_lists_and_deletes_a_webhook(client: Client, as_alice: dict[str, Any]) -> None:
    created = create(client, as_alice, {"url": "https://93.184.216.34/hook", "kinds": ["mention"]})
    assert created.status_code == 201, created.content
    data = created.json()
    assert set(data) == {"id", "url", "kinds", "created_at", "secret"}
    assert len(data["secret"]) >= 40
    assert Webhook.objects.get(pk=data["id"]).secret == data["secret"]

    listed = client.get("/api/webhooks", **as_alice).json()["webhooks"]
    assert listed == [{k: v for k, v in data.items() if k != "secret"}]

    assert client.delete(f"/api/webhooks/{data['id']}", **as_alice).status_code == 204
    assert client.get("/api/webhooks", **as_alice).json() == {"webhooks": []}


def test_kinds_default_to_every_kind(client: Client, as_alice: dict[str, Any]) -> None:
    created = create(client, as_alice, {"url": "http://93.184.216.34/"})
    assert created.status_code == 201
    assert created.json()["kinds"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"kinds": ["mention"]},
        {"url": 7},
        {"url": "ftp://93.184.216.34/x"},
        {"url": "93.184.216.34/x"},
        {"url": "http:///nohost"},
        {"url": "http://user:pw@93.184.216.34/"},
        {"url": "http://93.184.216.34:99999/"},
        {"url": "https://93.184.216.34/" + "a" * 2000},
        {"url": "https://93.184.216.34/", "kinds": "mention"},
        {"url": "https://93.184.216.34/", "kinds": [1]},
        {"url": "https://93.184.216.34/", "kinds": ["Not A Kind!"]},
        {"url": "https://93.184.216.34/", "kinds": ["k"] * 21},
        {"url": "https://no-such-host.invalid/"},
    ],
)
def test_it_refuses_bad_input_with_a_json_400(
    client: Client, as_alice: dict[str, Any], body: dict[str, Any]
) -> None:
    response = create(client, as_alice, body)
    assert response.status_code == 400, response.content
    assert error_code(response) == "bad_request"
    assert not Webhook.objects.exists()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/",
        "http://localhost/hook",
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://172.16.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fe80::1]/",
        "http://0.0.0.0/",
        "http://100.64.0.1/",
        "http://224.0.0.1/",
    ],
)
def test_it_refuses_private_addresses_without_the_flag(
    client: Client, as_alice: dict[str, Any], url: str
) -> None:
    response = create(client, as_alice, {"url": url})
    assert response.status_code == 400, response.content
    assert error_code(response) == "bad_request"
    assert "address" in response.json()["error"]["message"]
    assert not Webhook.objects.exists()


def test_the_flag_allows_a_local_receiver(
    client: Client, as_alice: dict[str, Any], allow_private: None
) -> None:
    assert create(client, as_alice, {"url": "http://localhost:9/hook"}).status_code == 201


def test_webhooks_per_user_are_limited(
    client: Client, as_alice: dict[str, Any], settings: Any
) -> None:
    settings.WEBHOOK_MAX_PER_USER = 2
    for _ in range(2):
        assert create(client, as_alice, {"url": "https://93.184.216.34/"}).status_code == 201
    response = create(client, as_alice, {"url": "https://93.184.216.34/"})
    assert response.status_code == 400
    assert Webhook.objects.count() == 2


def test_another_users_webhook_is_not_found(
    client: Client, as_alice: dict[str, Any], as_bob: dict[str, Any]
) -> None:
    hook_id = create(client, as_alice, {"url": "https://93.184.216.34/"}).json()["id"]
    assert client.get("/api/webhooks", **as_bob).json() == {"webhooks": []}
    response = client.delete(f"/api/webhooks/{hook_id}", **as_bob)
    assert response.status_code == 404
    assert error_code(response) == "not_found"
    assert client.delete(f"/api/webhooks/{2**64}", **as_bob).status_code == 404
    assert Webhook.objects.filter(pk=hook_id).exists()


def test_it_requires_authentication(client: Client, db: None) -> None:
    assert client.get("/api/webhooks").status_code == 401
    assert client.delete("/api/webhooks/1").status_code == 401


# The SSRF guard


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.31.255.255", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("0.0.0.0", False),  # noqa: S104 -- an address to refuse, not one to bind
        ("255.255.255.255", False),
        ("240.0.0.1", False),
        ("224.0.0.251", False),
        ("::1", False),
        ("::", False),
        ("fe80::1%1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:10.0.0.1", False),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(address) is public


def test_localhost_is_refused_unless_allowed() -> None:
    with pytest.raises(UnsafeURL, match="localhost resolves to"):
        check_url("http://localhost:8080/x", allow_private=False)
    target = check_url("http://localhost:8080/x?y=1", allow_private=True)
    assert (target.host, target.port, target.path) == ("localhost", 8080, "/x?y=1")
    assert not is_public(target.address)


def test_a_public_literal_address_is_kept_for_the_connection() -> None:
    target = check_url("https://93.184.216.34/a", allow_private=False)
    assert (target.scheme, target.address, target.port) == ("https", "93.184.216.34", 443)


# Signing and the backoff


def test_the_signature_is_an_hmac_of_the_timestamp_and_body() -> None:
    body = b'{"id":1}'
    header = webhooks.sign("s3cret", body, 1700000000)
    t, v1 = header.split(",")
    assert t == "t=1700000000"
    expected = hmac.new(b"s3cret", b'1700000000.{"id":1}', hashlib.sha256).hexdigest()
    assert v1 == f"v1={expected}"
    assert verify("s3cret", header, body)
    assert not verify("other", header, body)
    assert not verify("s3cret", header, body + b" ")


def test_the_backoff_is_exponential_with_full_jitter(settings: Any) -> None:
    settings.WEBHOOK_RETRY_BACKOFF_SECONDS = 1.0
    settings.WEBHOOK_RETRY_BACKOFF_MAX_SECONDS = 10.0
    for retries, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (9, 10.0)]:
        waits = [backoff(retries) for _ in range(200)]
        assert all(0 <= wait <= ceiling for wait in waits)
        assert max(waits) > ceiling / 2  # spread over the range, not a fixed wait
        assert min(waits) < ceiling / 2
