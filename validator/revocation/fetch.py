"""HTTP for CRLs and OCSP: timeouts, size caps, http/https only, checked redirects.

`requests` is imported on first use, so that a validation answered from the cache does
not pay for it. Each fetch has one monotonic deadline (`fetch_timeout`, and the
caller's `time_limit` when shorter) over connecting, redirects and reading the body:
the connect and read timeouts alone are per socket operation, so a server that answers a
byte a second would otherwise keep a download going for ever. Redirects are followed by
hand (at most `MAX_REDIRECTS`) so that each target can be checked: only http and https,
and never from https down to http. A CRL download larger than 1 MiB shows a progress bar
on stderr when stderr is a terminal.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import IO
from urllib.parse import urljoin, urlsplit

from idm.validator.errors import FetchError

MAX_REDIRECTS = 3
PROGRESS_MIN_BYTES = 1 << 20
_CHUNK = 1 << 16


def check_url(url: str) -> str:
    """Return the scheme of `url` if idm may fetch it (http or https), else raise."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(f"{url}: only http and https URLs are fetched")
    return scheme


@dataclass
class Fetcher:
    """Downloads CRLs and exchanges OCSP messages over HTTP(S) with hard limits."""

    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    fetch_timeout: float = 30.0
    crl_max_bytes: int = 100 * 1024 * 1024
    ocsp_max_bytes: int = 64 * 1024
    progress: IO[str] | None = None  # where to draw the bar; default stderr if a TTY

    def get_crl(self, url: str, *, time_limit: float | None = None) -> bytes:
        """Download a CRL from `url` (at most `crl_max_bytes`, within `fetch_timeout` and
        `time_limit` seconds)."""
        return self._request("GET", url, None, self.crl_max_bytes, True, time_limit)

    def post_ocsp(self, url: str, request_der: bytes, *, time_limit: float | None = None) -> bytes:
        """POST an OCSP request to `url` and return the response body."""
        return self._request("POST", url, request_der, self.ocsp_max_bytes, False, time_limit)

    def _request(
        self,
        method: str,
        url: str,
        body: bytes | None,
        limit: int,
        show_progress: bool,
        time_limit: float | None,
    ) -> bytes:
        import requests  # lazy: costs ~0.2 s to import

        scheme = check_url(url)
        budget = self.fetch_timeout if time_limit is None else min(time_limit, self.fetch_timeout)
        deadline = time.monotonic() + budget
        headers = {"User-Agent": "idm"}
        if body is not None:
            headers["Content-Type"] = "application/ocsp-request"
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            left = _left(deadline, current, budget)
            try:
                resp = requests.request(
                    method,
                    current,
                    data=body,
                    headers=headers,
                    timeout=(min(self.connect_timeout, left), min(self.read_timeout, left)),
                    allow_redirects=False,
                    stream=True,
                )
            except requests.RequestException as e:
                if time.monotonic() >= deadline:
                    raise FetchError(f"{current}: no answer within {budget:g} s") from None
                raise FetchError(f"{current}: {_describe(e)}") from None
            with resp:
                if resp.is_redirect or resp.status_code in (301, 302, 303, 307, 308):
                    target = urljoin(current, resp.headers.get("Location", ""))
                    new_scheme = check_url(target)
                    if scheme == "https" and new_scheme != "https":
                        raise FetchError(f"{current}: refusing redirect from https to {target}")
                    current, scheme = target, new_scheme
                    continue
                if resp.status_code != 200:
                    raise FetchError(f"{current}: HTTP status {resp.status_code}")
                return self._read_body(resp, current, limit, show_progress, deadline, budget)
        raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects")

    def _read_body(
        self,
        resp: object,
        url: str,
        limit: int,
        show_progress: bool,
        deadline: float,
        budget: float,
    ) -> bytes:
        import requests as rq
        import urllib3

        assert isinstance(resp, rq.Response)
        declared = resp.headers.get("Content-Length")
        total = int(declared) if declared and declared.isdigit() else None
        if total is not None and total > limit:
            raise FetchError(f"{url}: response of {total} bytes exceeds the limit of {limit}")
        out = self.progress
        if out is None and show_progress and sys.stderr.isatty():
            out = sys.stderr
        bar = out is not None and show_progress and (total or 0) >= PROGRESS_MIN_BYTES
        chunks: list[bytes] = []
        size = 0
        raw = resp.raw
        try:
            while True:
                _left(deadline, url, budget)
                # read1: whatever one socket read brings (at most read_timeout), so that the
                # deadline is looked at between reads however slowly the bytes drip in.
                chunk = raw.read1(_CHUNK, decode_content=True)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise FetchError(f"{url}: response exceeds the limit of {limit} bytes")
                chunks.append(chunk)
                if bar and out is not None and total:
                    pct = min(100, size * 100 // total)
                    out.write(f"\r{_short_url(url)} {size >> 10} KiB / {total >> 10} KiB {pct}%")
                    out.flush()
        except (rq.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            if time.monotonic() >= deadline:
                raise FetchError(f"{url}: no complete answer within {budget:g} s") from None
            raise FetchError(f"{url}: {_describe(e)}") from None
        finally:
            if bar and out is not None:
                out.write("\n")
                out.flush()
        return b"".join(chunks)


def _left(deadline: float, url: str, budget: float) -> float:
    """Seconds left before `deadline`; FetchError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError(f"{url}: no complete answer within {budget:g} s")
    return left


def _describe(e: Exception) -> str:
    """One short line for a requests exception (its own text nests urllib3 reprs)."""
    import requests

    text = str(e)
    if isinstance(e, requests.ConnectTimeout):
        return "connect timed out"
    if isinstance(e, requests.ReadTimeout) or "Read timed out" in text:
        return "read timed out"
    if isinstance(e, requests.exceptions.SSLError):
        return "TLS error"
    if isinstance(e, requests.ConnectionError):
        if "refused" in text:
            return "connection refused"
        if "Name or service not known" in text or "NameResolution" in text:
            return "host name not found"
        return "connection failed"
    first = text.splitlines()[0] if text else type(e).__name__
    return first[:120]


def _short_url(url: str) -> str:
    return url if len(url) <= 60 else "..." + url[-57:]
