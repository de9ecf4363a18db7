#!/usr/bin/env python3
"""nodeagent's kubelet image credential-provider exec plugin, installed under two names:

* ``nodeagent-ecr-credential-provider``: Amazon ECR tokens. They come from the cache the agent
  keeps (``<state-dir>/ecr-tokens.json``, 0600) when they have more than 15 minutes left;
  otherwise the agent is asked over its Unix socket. No AWS call is ever made here: botocore
  stays in the agent container.
* ``nodeagent-credential-provider`` (``--credentials FILE``): the registry credentials the agent
  manages, for every registry, from the file the agent keeps current (0600, root). The agent
  need not be running. Entries are chosen with the kubelet's own keyring rules (the same
  matching as config.json keys, the Docker Hub fallback included); an entry scoped to
  namespaces is served only when the request carries a ServiceAccount token (KEP-4412) of a pod
  in one of them. Answers are not cached by the kubelet (``cacheDuration: 0s``), so a rotation
  is used by the very next pull.

The kubelet runs this file on the host with the host's ``python3``, so it imports only the
standard library and nothing from the rest of nodeagent (the agent copies this very file to the
node). Protocol (kubelet credential provider API): a ``CredentialProviderRequest`` JSON on stdin,
a ``CredentialProviderResponse`` JSON on stdout in the same apiVersion, exit 0; on any problem
exit 1 with one line on stderr and nothing on stdout (the kubelet then treats it as "no
credentials from this plugin").
"""

from __future__ import annotations

import base64
import fnmatch
import json
import math
import os
import re
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # typing, argparse and socket cost ~14 ms of start-up on every kubelet pull
    from typing import IO, Any

API_VERSIONS = (
    "credentialprovider.kubelet.k8s.io/v1",
    "credentialprovider.kubelet.k8s.io/v1beta1",
    "credentialprovider.kubelet.k8s.io/v1alpha1",
)
# The reference provider's host pattern (kubernetes/cloud-provider-aws, ecr-credential-provider).
PRIVATE_HOST = re.compile(
    r"^(\d{12})\.dkr[\.\-]ecr(\-fips)?\.([a-zA-Z0-9][a-zA-Z0-9-_]*)\."
    r"(amazonaws\.(?:com(?:\.cn)?|eu)|on\.(?:aws|amazonwebservices\.com\.cn)|sc2s\.sgov\.gov|c2s\.ic\.gov"
    r"|cloud\.adc-e\.uk|csp\.hci\.ic\.gov)$"
)
REGION = re.compile(r"^[a-z]{2,8}(?:-[a-z0-9]+)*-\d{1,2}$")
"""An AWS region name (``us-east-1``, ``us-gov-west-1``, ``eusc-de-east-1``): the one rule for a
private-ECR cache key, here and in the agent (``nodeagent.ecr.tokens.valid_key``)."""
PUBLIC_HOSTS = ("public.ecr.aws", "ecr-public.aws.com")
PUBLIC_KEY = "public"
"""Cache key of the ECR Public token (its API lives in us-east-1)."""
MIN_REMAINING = 15 * 60
"""A token with less than this left is not handed out: the kubelet may cache it for half of it."""
SOCKET_TIMEOUT = 20.0
"""Well inside the kubelet's own 60 s limit for a plugin run."""
CACHE_FILE = "ecr-tokens.json"
CREDENTIALS_VERSION = 2
"""Version of the credentials file the agent writes for ``--credentials``. Version 2 stores each
namespace scope once (``scopes``: exact names as one newline-framed string, globs as a list) and
entries name theirs by index, so a run's cost does not grow with the names in a scope: the names
are one JSON string to scan, not one object each (version 1 copied the list into every entry)."""
NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
"""A namespace name (a DNS label): checked before a scope lookup, so no name spans two others."""
DEFAULT_REGISTRY = "index.docker.io"

MAX_DEPTH = 32
"""Deepest JSON accepted on stdin, in the cache and from the socket (real documents nest 3 deep)."""

__all__ = [
    "CREDENTIALS_VERSION",
    "PRIVATE_HOST",
    "PUBLIC_HOSTS",
    "PUBLIC_KEY",
    "REGION",
    "go_duration",
    "is_cache_key",
    "is_docker_hub_image",
    "keyring_matches",
    "loads_strict",
    "parse_ecr_host",
    "respond_static",
    "run",
    "token_namespace",
    "url_matches",
]


class PluginError(Exception):
    """A one-line reason for stderr; never contains a token."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _bounded_int(text: str) -> int:
    if len(text) > 20:
        raise ValueError("number too long")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text[:400]) if len(text) <= 400 else math.inf
    if not math.isfinite(value):
        raise ValueError("number not finite")
    return value


def loads_strict(data: bytes | str) -> Any:
    """JSON with bounded numbers and depth, no NaN/Infinity: ValueError for anything else.

    The plugin's own copy of the agent's strict decoding (``nodeagent.model.decoding``; it runs on the
    host with only the standard library); tests/test_ecr_plugin.py checks that both agree.
    """
    try:
        document = json.loads(data, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    stack = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError("nested too deeply")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
            if any(isinstance(k, str) and _has_surrogate(k) for k in value):
                raise ValueError("a key is not valid Unicode")
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str) and _has_surrogate(value):
            raise ValueError("a string is not valid Unicode")
    return document


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and any("\ud800" <= ch <= "\udfff" for ch in text)


def is_cache_key(key: str) -> bool:
    """A token cache key: ``public`` or an AWS region name."""
    return key == PUBLIC_KEY or bool(REGION.match(key))


def parse_ecr_host(host: str) -> str | None:
    """The cache key for an ECR host (its region, or ``public``), or None when it is not ECR."""
    if host in PUBLIC_HOSTS:
        return PUBLIC_KEY
    match = PRIVATE_HOST.match(host)
    return match.group(3) if match and REGION.match(match.group(3)) else None


def go_duration(seconds: float) -> str:
    """Format whole seconds as Go's ``time.Duration.String`` does (``6h0m0s``, ``59m0s``, ``30s``)."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _image_host(image: str) -> str:
    first, slash, _ = image.partition("/")
    if not slash:
        raise PluginError("image has no registry host")
    return first


def _read_cache(state_dir: str, key: str) -> tuple[str, float] | None:
    path = os.path.join(state_dir, CACHE_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            entry = loads_strict(handle.read(1 << 20)).get("tokens", {}).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(entry, dict):
        return None
    token, expires = entry.get("token"), entry.get("expiresAt")
    if not isinstance(token, str) or not isinstance(expires, (int, float)):
        return None
    return token, float(expires)


def _ask_agent(socket_path: str, key: str, timeout: float) -> tuple[str, float]:
    import socket  # only on a cache miss

    request = json.dumps({"key": key}).encode() + b"\n"
    deadline = time.monotonic() + timeout  # one limit for the whole exchange, not per recv
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(socket_path)
            conn.sendall(request)
            chunks: list[bytes] = []
            size = 0
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError()
                conn.settimeout(left)
                chunk = conn.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > 1 << 20:
                    raise PluginError("the nodeagent agent sent an answer larger than 1 MiB")
                if chunk.endswith(b"\n"):
                    break
    except TimeoutError:
        raise PluginError(f"the nodeagent agent did not answer within {timeout:g}s on {socket_path}") from None
    except OSError as exc:
        raise PluginError(f"cannot reach the nodeagent agent on {socket_path}: {exc.strerror or exc}") from None
    try:
        answer = loads_strict(b"".join(chunks))
    except ValueError:
        raise PluginError("the nodeagent agent sent an unreadable answer") from None
    if not isinstance(answer, dict):
        raise PluginError("the nodeagent agent sent an unreadable answer")
    if answer.get("error"):
        raise PluginError(f"the nodeagent agent could not get a token: {str(answer['error'])[:200]}")
    token, expires = answer.get("token"), answer.get("expiresAt")
    if not isinstance(token, str) or not isinstance(expires, (int, float)):
        raise PluginError("the nodeagent agent sent an answer without a token")
    return token, float(expires)


def _split_token(token: str) -> tuple[str, str]:
    try:
        user, sep, password = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        raise PluginError("the cached token is not base64 of user:password") from None
    if not sep:
        raise PluginError("the cached token is not base64 of user:password")
    return user, password


# -- the kubelet's keyring rules (pkg/credentialprovider/keyring.go, k8s 1.34) ---------------------
def _split(value: str) -> tuple[str, str, str]:
    """host, port and path as the kubelet's SplitURL sees them (net.SplitHostPort, else no port)."""
    hostport, _, path = value.partition("/")
    if hostport.startswith("["):
        end = hostport.find("]")
        rest = hostport[end + 1 :]
        if end > 0 and rest.startswith(":") and ":" not in rest[1:]:
            return hostport[1:end], rest[1:], path
        return hostport, "", path  # SplitHostPort fails: the whole host, brackets and all
    if hostport.count(":") == 1:
        host, port = hostport.split(":", 1)
        return host, port, path
    return hostport, "", path


def url_matches(pattern: str, target: str) -> bool:
    """The kubelet's URLsMatch: globs per DNS label, equal ports, path as a raw prefix."""
    p_host, p_port, p_path = _split(pattern)
    t_host, t_port, t_path = _split(target)
    if p_port != t_port:
        return False
    p_labels, t_labels = p_host.split("."), t_host.split(".")
    if len(p_labels) != len(t_labels):
        return False
    if not t_path.startswith(p_path):
        return False
    # A label without glob characters matches only itself (and costs no regex compile: a node
    # with a thousand registries would otherwise overflow fnmatch's pattern cache on every run).
    return all(
        p == t if not any(c in p for c in "*?[") else fnmatch.fnmatchcase(t, p)
        for p, t in zip(p_labels, t_labels, strict=True)
    )


def is_docker_hub_image(image: str) -> bool:
    """The kubelet's isDefaultRegistryMatch."""
    parts = image.split("/", 1)
    if not parts[0]:
        return False
    if len(parts) == 1:
        return True
    if parts[0] in ("docker.io", "index.docker.io"):
        return True
    return not any(ch in parts[0] for ch in ".:")


def keyring_key(key: str) -> str:
    """A config.json key as the kubelet's keyring files it: scheme gone, a /v1/ or /v2/ path
    prefix gone, the host's case kept."""
    for scheme in ("https://", "http://"):
        if key.startswith(scheme):
            key = key[len(scheme) :]
            break
    host, slash, path = key.partition("/")
    path = slash + path
    if path.startswith(("/v1/", "/v2/")):
        path = path[3:]
    return host if path in ("", "/") else host + path


def keyring_matches(image: str, keys: list[str]) -> list[str]:
    """The keys the kubelet's keyring tries for ``image`` (a normalised repository, as the kubelet
    passes it), most specific first; the ``index.docker.io`` key only when nothing matched."""
    index: dict[str, list[str]] = {}
    for key in keys:
        index.setdefault(keyring_key(key), []).append(key)
    found = [k for indexed in sorted(index, reverse=True) if url_matches(indexed, image) for k in index[indexed]]
    if not found and is_docker_hub_image(image):
        found = list(index.get(DEFAULT_REGISTRY, []))
    return found


TOKEN_LEEWAY = 30.0
"""Seconds of clock difference between the API server that minted a token and this node."""


def token_namespace(token: Any, *, now: float | None = None) -> str | None:
    """The namespace in a ServiceAccount token's claims, when the token is current (``exp`` in the
    future and ``nbf``, if any, past, within :data:`TOKEN_LEEWAY`). The kubelet minted the token
    for the pod it is pulling for and runs this plugin as root: the signature is not verified,
    but an expired token (a replayed request, a stale cache) gets no scoped credentials."""
    if not isinstance(token, str) or token.count(".") != 2:
        return None
    payload = token.split(".")[1]
    try:
        claims = loads_strict(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return None
    if not isinstance(claims, dict):
        return None
    now = time.time() if now is None else now
    expires, not_before = _number(claims.get("exp")), _number(claims.get("nbf", 0))
    if expires is None or not_before is None or now >= expires + TOKEN_LEEWAY or now + TOKEN_LEEWAY < not_before:
        return None
    namespace = (
        (claims.get("kubernetes.io") or {}).get("namespace") if isinstance(claims.get("kubernetes.io"), dict) else None
    )
    if not isinstance(namespace, str):
        parts = str(claims.get("sub", "")).split(":")
        namespace = parts[2] if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"] else None
    return namespace or None


def _number(value: Any) -> float | None:
    """A JSON number as a float (a bool, a string or an infinity is not one)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _read_credentials(path: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """The entries and the scopes of the agent's credentials file, or PluginError. The file must
    be the one the agent writes: owned by the user running the plugin (root, under the kubelet)
    and private (mode 0600); another user's, or one others can write or read, is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise PluginError(f"cannot read {path}: {exc.strerror or exc} (is nodeagent installed on this node?)") from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        raise PluginError(
            f"{path} is owned by uid {st.st_uid} with mode {st.st_mode & 0o777:o}; it must be owned by uid "
            f"{os.geteuid()} and private (0600): refusing it"
        )
    try:
        with os.fdopen(fd, "rb") as handle:
            document = loads_strict(handle.read(16 << 20))
    except (OSError, ValueError):
        raise PluginError(f"{path} is not a credentials file nodeagent wrote") from None
    if not isinstance(document, dict) or document.get("version") != CREDENTIALS_VERSION:
        raise PluginError(f"{path} is not a credentials file of version {CREDENTIALS_VERSION}")
    entries, scopes = document.get("entries"), document.get("scopes", [])
    if not isinstance(entries, list) or not isinstance(scopes, list):
        raise PluginError(f"{path} has no entries list")
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("key"), str)], scopes


def _served(entry: dict[str, Any], scopes: list[Any], namespace: str | None) -> bool:
    index = entry.get("scope")
    if index is None:
        return True
    if namespace is None or not isinstance(index, int) or not 0 <= index < len(scopes):
        return False
    scope = scopes[index]
    if not isinstance(scope, dict):
        return False
    names, globs = scope.get("names"), scope.get("globs")
    if isinstance(names, str) and f"\n{namespace}\n" in names:
        return True
    return isinstance(globs, list) and any(isinstance(g, str) and fnmatch.fnmatchcase(namespace, g) for g in globs)


def respond_static(request: Any, *, credentials_file: str, scoped_only: bool = False) -> dict[str, Any]:
    """The response for a request from the agent's credentials file, or PluginError; with
    ``scoped_only`` (``--serve scoped``) only entries scoped to the token's namespace."""
    api_version, image = _check_request(request)
    namespace = token_namespace(request.get("serviceAccountToken")) if api_version == API_VERSIONS[0] else None
    if namespace is not None and not NAMESPACE.fullmatch(namespace):
        namespace = None  # not a namespace a pod can be in: only node-wide entries are served
    entries, scopes = _read_credentials(credentials_file)
    entries = [e for e in entries if _served(e, scopes, namespace) and not (scoped_only and e.get("scope") is None)]
    auth: dict[str, dict[str, str]] = {}
    # A key both scoped and node-wide: the entry listed first (the agent lists scoped ones first) wins.
    for key in keyring_matches(image, [e["key"] for e in entries]):
        entry = next(e for e in entries if e["key"] == key)
        username, password = entry.get("username"), entry.get("password")
        if key not in auth and isinstance(username, str) and isinstance(password, str):
            auth[key] = {"username": username, "password": password}
    return {
        "apiVersion": api_version,
        "kind": "CredentialProviderResponse",
        "cacheKeyType": "Image",
        "cacheDuration": "0s",  # not cached: a rotation is the answer to the very next pull
        "auth": auth,
    }


def _check_request(request: Any) -> tuple[str, str]:
    if not isinstance(request, dict):
        raise PluginError("request is not a JSON object")
    api_version = request.get("apiVersion")
    if api_version not in API_VERSIONS:
        raise PluginError(f"unsupported apiVersion {str(api_version)[:80]!r}")
    if request.get("kind") != "CredentialProviderRequest":
        raise PluginError(f"unexpected kind {str(request.get('kind'))[:80]!r}")
    image = request.get("image")
    if not isinstance(image, str) or not image:
        raise PluginError("request has no image")
    return str(api_version), image


def respond(
    request: Any, *, state_dir: str, socket_path: str, now: float, timeout: float = SOCKET_TIMEOUT
) -> dict[str, Any]:
    """The response for a request, or PluginError."""
    api_version, image = _check_request(request)
    host = _image_host(image)
    key = parse_ecr_host(host)
    if key is None:
        raise PluginError(f"{host[:120]} is not an ECR registry")
    cached = _read_cache(state_dir, key)
    if cached is None or cached[1] - now <= MIN_REMAINING:
        cached = _ask_agent(socket_path, key, timeout)
        if cached[1] - now <= 0:
            raise PluginError("the nodeagent agent has only an expired token (is the node's clock right?)")
    token, expires = cached
    username, password = _split_token(token)
    return {
        "apiVersion": api_version,
        "kind": "CredentialProviderResponse",
        "cacheKeyType": "Registry",
        "cacheDuration": go_duration((expires - now) / 2),
        "auth": {host: {"username": username, "password": password}},
    }


def run(stdin: IO[str], stdout: IO[str], argv: list[str], stderr: IO[str] | None = None) -> int:
    """The protocol shell: parse args, read the request, write only the response to stdout."""
    err = stderr or sys.stderr
    options = {
        "--state-dir": os.environ.get("NODEAGENT_STATE_DIR", "/var/lib/nodeagent"),
        "--socket": os.environ.get("NODEAGENT_SOCKET", "/run/nodeagent/agent.sock"),
        "--credentials": "",
        "--serve": "all",
    }
    for i, arg in enumerate(argv):  # --flag VALUE or --flag=VALUE; unknown arguments are ignored
        name, eq, value = arg.partition("=")
        if name in options:
            if eq:
                options[name] = value
            elif i + 1 < len(argv):
                options[name] = argv[i + 1]
    try:
        try:
            request = loads_strict(stdin.read(1 << 20))
        except ValueError:
            raise PluginError("stdin is not a JSON CredentialProviderRequest") from None
        if options["--credentials"]:
            scoped_only = options["--serve"] == "scoped"
            response = respond_static(request, credentials_file=options["--credentials"], scoped_only=scoped_only)
        else:
            response = respond(
                request, state_dir=options["--state-dir"], socket_path=options["--socket"], now=time.time()
            )
    except PluginError as exc:
        name = "nodeagent-credential-provider" if options["--credentials"] else "nodeagent-ecr-credential-provider"
        name = "nodeagent-scoped-credential-provider" if options["--serve"] == "scoped" else name
        err.write(f"{name}: {exc}\n")
        return 1
    stdout.write(json.dumps(response))
    stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.stdin, sys.stdout, sys.argv[1:]))
