"""``doctor --probe``: ask each registry's ``/v2/`` whether the node's credential works.

One httpx client per registry, with the TLS the node itself uses for that registry (the CA,
client certificate and skip_verify of its hosts.toml, top level or the ``[host."https://HOST"]``
table of the registry's own origin, plus ``--ca-file``), all registries at once, each bounded by
``timeout`` per phase. The Basic and Bearer-token flows of the distribution spec are followed as a
pull does: with a Basic challenge the credential goes to the registry itself; with a Bearer
challenge it goes to the token service the registry names (its ``realm``, often another host such
as ``auth.docker.io``), as containerd and the kubelet's pull send it, and only over https
(``unsupported-realm`` otherwise). A redirect is followed only to the same https origin, so the
credential never goes to a host the registry did not name, nor over plain http. Each failure says
what failed, so the fix can fit it.
"""

from __future__ import annotations

import base64
import shlex
import socket
import ssl
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from nodeagent.model.decoding import DecodeError, loads_json

__all__ = ["FIXES", "ProbeTarget", "probe_all"]

MAX_REDIRECTS = 5
MAX_PARALLEL = 16

FIXES = {
    "valid": "",
    "anonymous-ok": "",
    "rejected": "the registry refused the credential (401): rotate it in the central Secret",
    "forbidden": "the credential is known but may not pull (403): grant the account pull access",
    "dns-error": "the node cannot resolve the registry's name: check the name in the Secret and the node's DNS",
    "refused": "nothing listens on the registry's host and port: check them, and that the registry is up",
    "timeout": "no answer within --timeout: a firewall, a proxy (HTTPS_PROXY/NO_PROXY) or the registry itself",
    "tls-error": "TLS failed (an untrusted or mismatched certificate): give the registry's CA in --registry-config "
    "(ca = ...), or --ca-file",
    "redirect-refused": "the registry redirected the credentialed request to another host or to http: "
    "not followed (the credential would leak); check the registry's external URL",
    "unsupported-realm": "the registry's token service is not https: not asked (the credential would travel in clear)",
    "unreachable": "the connection failed: check the host, port and the node's network",
    "invalid-credential": "the entry's auth does not decode: the kubelet ignores the whole config.json",
}
"""The fix for each result (``http-NNN`` results get the ``unreachable`` advice)."""


@dataclass(frozen=True)
class ProbeTarget:
    """One registry to probe, with the credential and the node's TLS settings for it."""

    key: str
    host: str
    username: str = field(repr=False)
    password: str = field(repr=False)
    ca_files: tuple[str, ...] = ()
    client_cert: tuple[str, str] | None = None
    skip_verify: bool = False


class _RedirectRefused(Exception):
    pass


def _context(target: ProbeTarget, ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    for path in (*target.ca_files, *([ca_file] if ca_file else [])):
        context.load_verify_locations(cafile=path)
    if target.client_cert is not None:
        context.load_cert_chain(*target.client_cert)
    if target.skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _classify(exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return "dns-error"
        if isinstance(cause, ConnectionRefusedError):
            return "refused"
        if isinstance(cause, ssl.SSLError):
            return "tls-error"
        cause = cause.__cause__ or cause.__context__
    text = str(exc).lower()  # httpcore keeps some causes only in the message
    if "name or service not known" in text or "nodename nor servname" in text or "temporary failure in name" in text:
        return "dns-error"
    if "connection refused" in text:
        return "refused"
    if "certificate" in text or "ssl" in text or "tls" in text:
        return "tls-error"
    return "unreachable"


def _get(client: httpx.Client, url: str, authorization: str | None) -> httpx.Response:
    """GET, following redirects only to the same https origin."""
    for _ in range(MAX_REDIRECTS + 1):
        if not url.startswith("https://"):
            raise _RedirectRefused()
        headers = {"Authorization": authorization} if authorization else {}
        response = client.get(url, headers=headers)
        if not response.is_redirect:
            return response
        location = urllib.parse.urljoin(url, response.headers.get("Location", ""))
        old, new = urllib.parse.urlsplit(url), urllib.parse.urlsplit(location)
        if (new.scheme, new.netloc) != ("https", old.netloc):
            raise _RedirectRefused()
        url = location
    raise _RedirectRefused()


def _bearer_token_url(challenge: str) -> str:
    params = dict(
        item.split("=", 1) for item in shlex.split(challenge[len("Bearer ") :].replace(",", " ")) if "=" in item
    )
    query = {k: v for k, v in params.items() if k in ("service", "scope")}
    return params.get("realm", "") + ("?" + urllib.parse.urlencode(query) if query else "")


def probe_one(target: ProbeTarget, *, ca_file: str | None, timeout: float) -> str:
    """The result for one registry (a key of ``FIXES``, or ``http-NNN``)."""
    basic = "Basic " + base64.b64encode(f"{target.username}:{target.password}".encode()).decode()
    url = f"https://{target.host}/v2/"
    try:
        context = _context(target, ca_file)
    except (OSError, ssl.SSLError, ValueError):  # the node's CA or client files unusable
        return "tls-error"
    try:
        with httpx.Client(verify=context, timeout=timeout, follow_redirects=False, trust_env=True) as client:
            response = _get(client, url, None)
            if response.status_code == 200:
                return "anonymous-ok"
            challenge = response.headers.get("WWW-Authenticate", "")
            if challenge.lower().startswith("bearer"):
                token_url = _bearer_token_url(challenge)
                if not token_url.startswith("https://"):
                    return "unsupported-realm"
                answer = _get(client, token_url, basic)
                if answer.status_code != 200:
                    return "forbidden" if answer.status_code == 403 else "rejected"
                try:
                    body = loads_json(answer.content[:65536])
                except DecodeError:
                    return "rejected"
                token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
                if not isinstance(token, str):
                    return "rejected"
                response = _get(client, url, f"Bearer {token}")
            else:
                response = _get(client, url, basic)
    except _RedirectRefused:
        return "redirect-refused"
    except (httpx.HTTPError, OSError, ssl.SSLError, ValueError) as exc:
        return _classify(exc)
    status = response.status_code
    return {200: "valid", 401: "rejected", 403: "forbidden"}.get(status, f"http-{status}")


def probe_all(
    targets: Sequence[ProbeTarget],
    *,
    ca_file: str | None = None,
    timeout: float = 10.0,
    on_result: Callable[[ProbeTarget, str], None] | None = None,
) -> list[str]:
    """Probe every target at once (at most 16 at a time); results in the targets' order."""

    def run(target: ProbeTarget) -> str:
        result = probe_one(target, ca_file=ca_file, timeout=timeout)
        if on_result is not None:
            on_result(target, result)
        return result

    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(targets))) as pool:
        return list(pool.map(run, targets))
