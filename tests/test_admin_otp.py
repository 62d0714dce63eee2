"""The admin needs a second factor: a password alone, or a session without a TOTP token, gets
nobody past the login page; add_totp_device prints a URL whose codes open it."""

from __future__ import annotations

import base64
from io import StringIO
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

ROOMS = "/admin/web/room/"
PASSWORD = "root-password"


@pytest.fixture
def root(db: None) -> Any:
    return get_user_model().objects.create_superuser("root", password=PASSWORD)


@pytest.fixture
def phone(root: Any) -> Any:
    return TOTPDevice.objects.create(user=root, name="phone", confirmed=True)


def current_token(key: bytes, digits: int = 6) -> str:
    """What an authenticator app shows now for this key (30-second steps from the epoch)."""
    return f"{TOTP(key, digits=digits).token():0{digits}d}"


def admin_login(client: Client, device: Any, token: str, password: str = PASSWORD) -> Any:
    return client.post(
        "/admin/login/",
        {
            "username": "root",
            "password": password,
            "otp_device": device.persistent_id,
            "otp_token": token,
            "next": ROOMS,
        },
    )


def assert_sent_to_login(response: Any) -> None:
    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={ROOMS}"


def test_a_superuser_without_a_second_factor_is_sent_to_the_login(root: Any, phone: Any) -> None:
    client = Client()
    client.force_login(root)
    assert_sent_to_login(client.get(ROOMS))


def test_the_right_password_without_a_token_is_refused(root: Any, phone: Any) -> None:
    client = Client()
    response = admin_login(client, phone, token="")
    assert response.status_code == 200  # the login form again, with an error
    assert "Please enter your OTP token" in response.content.decode()
    assert_sent_to_login(client.get(ROOMS))


def test_a_wrong_token_is_refused(root: Any, phone: Any) -> None:
    client = Client()
    wrong = f"{(int(current_token(phone.bin_key)) + 1) % 10**6:06d}"
    assert admin_login(client, phone, wrong).status_code == 200
    assert_sent_to_login(client.get(ROOMS))


def test_a_valid_token_without_the_password_is_refused(root: Any, phone: Any) -> None:
    client = Client()
    response = admin_login(client, phone, current_token(phone.bin_key), password="guess")
    assert response.status_code == 200
    assert_sent_to_login(client.get(ROOMS))


def test_the_password_and_a_valid_token_open_the_admin(root: Any, phone: Any) -> None:
    client = Client()
    response = admin_login(client, phone, current_token(phone.bin_key))
    assert response.status_code == 302
    assert response["Location"] == ROOMS
    assert client.get(ROOMS).status_code == 200


def test_someone_elses_device_does_not_verify_the_session(root: Any, alice: Any) -> None:
    theirs = TOTPDevice.objects.create(user=alice, name="alice's phone", confirmed=True)
    client = Client()
    client.force_login(root)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = theirs.persistent_id
    session.save()
    assert_sent_to_login(client.get(ROOMS))


def test_add_totp_device_prints_a_url_whose_codes_open_the_admin(root: Any) -> None:
    out = StringIO()
    call_command("add_totp_device", "root", stdout=out)
    url = urlsplit(out.getvalue().strip())
    assert (url.scheme, url.netloc, url.path) == ("otpauth", "totp", "/chat%3Aroot")
    query = parse_qs(url.query)
    assert query["issuer"] == ["chat"]
    device = TOTPDevice.objects.get(user=root)
    assert device.confirmed
    # The operator's app knows only the URL: codes computed from its secret must work.
    key = base64.b32decode(query["secret"][0])
    assert key == device.bin_key
    client = Client()
    assert admin_login(client, device, current_token(key)).status_code == 302
    assert client.get(ROOMS).status_code == 200


def test_add_totp_device_refuses_an_unknown_user(db: None) -> None:
    with pytest.raises(CommandError, match="no active user 'zed'"):
        call_command("add_totp_device", "zed", stdout=StringIO())
    assert not TOTPDevice.objects.exists()
