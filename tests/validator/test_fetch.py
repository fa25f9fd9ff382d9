"""HTTP limits: schemes, redirects, size caps, progress bar; and validate() inside a loop."""

from __future__ import annotations

import asyncio
import io

import pytest

from idm.validator.api import validate
from idm.validator.errors import FetchError
from idm.validator.policy import Policy
from idm.validator.revocation.fetch import Fetcher
from tests.validator.pki import make_pki
from tests.validator.responders import Reply, responder


def test_only_http_and_https():
    for url in ("file:///etc/passwd", "ldap://ldap.example/cn=x", "ftp://x/y.crl"):
        with pytest.raises(FetchError, match="only http and https"):
            Fetcher().get_crl(url)


def test_redirects_checked():
    def answer(path: str, body: bytes) -> Reply:
        if path == "/to-file":
            return Reply(302, headers={"Location": "file:///etc/passwd"})
        if path == "/loop":
            return Reply(302, headers={"Location": "/loop"})
        if path == "/to-ok":
            return Reply(301, headers={"Location": "/ok"})
        return Reply(200, b"crl bytes")

    with responder(answer) as srv:
        f = Fetcher(connect_timeout=1, read_timeout=2)
        assert f.get_crl(srv.url + "/to-ok") == b"crl bytes"
        with pytest.raises(FetchError, match="only http and https"):
            f.get_crl(srv.url + "/to-file")
        with pytest.raises(FetchError, match="redirects"):
            f.get_crl(srv.url + "/loop")


def test_size_caps_and_progress():
    big = b"\x00" * (2 << 20)
    with responder(lambda p, b: Reply(200, big)) as srv:
        with pytest.raises(FetchError, match="exceeds the limit"):
            Fetcher(crl_max_bytes=1 << 20).get_crl(srv.url)
        with pytest.raises(FetchError, match="exceeds the limit"):
            Fetcher().post_ocsp(srv.url, b"req")  # OCSP cap: 64 KiB
        bar = io.StringIO()
        assert Fetcher(progress=bar).get_crl(srv.url) == big
        assert "2048 KiB / 2048 KiB 100%" in bar.getvalue()


def test_http_status_is_an_error():
    with responder(lambda p, b: Reply(404, b"no")) as srv:
        with pytest.raises(FetchError, match="HTTP status 404"):
            Fetcher().get_crl(srv.url)


def test_validate_inside_a_running_event_loop():
    root, inter, leaf = make_pki()

    async def inside():
        return validate(
            leaf.cert,
            anchors=[root.cert],
            intermediates=[inter.cert],
            policy=Policy(revocation="off"),
        )

    assert asyncio.run(inside()).status == "valid"
