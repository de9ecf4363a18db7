"""Registry names and ``auth`` values, read exactly as the kubelet reads them.

Pure functions, no I/O. The rules come from the kubelet's credential keyring
(``pkg/credentialprovider/keyring.go`` and ``config.go``), summarised in design.md:

* a key without a scheme gets ``https://``; the scheme is then dropped;
* a path that starts with ``/v1/`` or ``/v2/`` loses those three characters, and a path of
  ``/`` (or none) is dropped, so ``https://index.docker.io/v1/`` becomes ``index.docker.io``;
* ports, remaining path prefixes and ``*`` glob labels are kept;
* ``auth`` is padded base64 when it ends in ``=``, unpadded otherwise (Go's ``StdEncoding`` /
  ``RawStdEncoding``, which skip ``\\r`` and ``\\n``), split on the first ``:``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re

__all__ = [
    "MAX_KEY_BYTES",
    "NAME_MAX",
    "InvalidRegistry",
    "check_containerd_host",
    "decode_auth",
    "mask_userinfo",
    "normalise_key",
    "split_host_port",
    "validate_registry_host",
]

MAX_KEY_BYTES = 2048
"""Longest registry key accepted. Real keys are host plus a short path; 2 KiB is generous."""

_DNS_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
# A kubelet key label may hold glob characters (filepath.Match per label); no others.
_GLOB_LABEL = re.compile(r"^[A-Za-z0-9_*?-]{1,63}$")
_PATH = re.compile(r"^[A-Za-z0-9._~/:@!$&'()+,;=%-]*$")
_B64_PADDED = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
_B64_RAW = re.compile(r"^[A-Za-z0-9+/]*$")


class InvalidRegistry(ValueError):
    """A registry key or host is not acceptable; the message names why, never a secret."""


def _check_text(value: str, what: str) -> None:
    if len(value.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidRegistry(f"{what} is longer than {MAX_KEY_BYTES} bytes")
    if not value:
        raise InvalidRegistry(f"{what} is empty")
    for ch in value:
        if ch == "\x00":
            raise InvalidRegistry(f"{what} contains a NUL character")
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise InvalidRegistry(f"{what} contains a control character")
        if ch.isspace():
            raise InvalidRegistry(f"{what} contains whitespace")
        if ord(ch) > 0x7E:
            raise InvalidRegistry(f"{what} contains a non-ASCII character (use the IDNA form)")


def split_host_port(hostport: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` (IPv6 in brackets) and check the port is 1-65535."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise InvalidRegistry("IPv6 address is missing its closing ']'")
        host, rest = hostport[: end + 1], hostport[end + 1 :]
        if rest and not rest.startswith(":"):
            raise InvalidRegistry("unexpected text after the IPv6 address")
        port_text = rest[1:] if rest else None
    elif hostport.count(":") > 1:
        raise InvalidRegistry("an IPv6 address must be written in brackets")
    elif ":" in hostport:
        host, port_text = hostport.split(":", 1)
    else:
        host, port_text = hostport, None
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not port_text.isascii():
        raise InvalidRegistry("port is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise InvalidRegistry("port is not in 1-65535")
    return host, port


def _check_ip_or_labels(host: str, *, allow_glob: bool) -> None:
    if not host:
        raise InvalidRegistry("host is empty")
    if host.startswith("["):
        if "%" in host:
            # A zone ID names an interface of one machine: meaningless for a cluster-wide registry,
            # and its free-form text would become a directory name and a TOML key.
            raise InvalidRegistry("IPv6 zone IDs ('%...') are not accepted in a registry host")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError as exc:
            raise InvalidRegistry("not a valid IPv6 address") from exc
        return
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError as exc:
            raise InvalidRegistry("not a valid IPv4 address") from exc
        return
    if len(host) > 253:
        raise InvalidRegistry("host name is longer than 253 characters")
    pattern = _GLOB_LABEL if allow_glob else _DNS_LABEL
    for label in host.split("."):
        if label in ("", ".."):
            raise InvalidRegistry("host name has an empty label")
        if not pattern.match(label):
            raise InvalidRegistry("host name has an invalid label")


def validate_registry_host(value: str) -> str:
    """Accept only ``DNS-name|IPv4|[IPv6]`` with an optional port; return it unchanged.

    This is the gate for any registry name that will become part of a host path (containerd's
    ``certs.d/<host>/hosts.toml``): no ``/``, ``..``, NUL, whitespace, control characters or globs.
    """
    _check_text(value, "registry host")
    if "/" in value or "\\" in value:
        raise InvalidRegistry("registry host contains a path separator")
    host, _ = split_host_port(value)
    _check_ip_or_labels(host, allow_glob=False)
    return value


NAME_MAX = 255
"""Longest file name on Linux: a ``certs.d/<host[:port]>`` directory name must fit."""


def check_containerd_host(hostport: str) -> str:
    """Refuse a (validated) host that containerd's own files cannot carry; return it unchanged.

    containerd 1.6 reads its TOML with go-toml v1, whose table-header lexer stops at the first
    ``]`` even inside quotes ("table key cannot contain ']'"): a ``[host."http://[::1]:5000"]`` or
    ``configs."[::1]:5000"`` table makes it ignore the hosts.toml or refuse to start. And the host
    becomes a directory name, at most 255 bytes.
    """
    if "[" in hostport or "]" in hostport:
        raise InvalidRegistry(
            "an IPv6 host cannot be written to containerd's files (containerd 1.6's TOML parser rejects "
            "']' in a table key); use a DNS name for it"
        )
    if len(hostport.encode()) > NAME_MAX:
        raise InvalidRegistry(f"host and port are longer than {NAME_MAX} bytes, too long for a directory name")
    return hostport


def normalise_key(key: str) -> str:
    """Return the kubelet's keyring key for a ``config.json`` ``auths`` key.

    Raises InvalidRegistry for keys the kubelet could not parse or that no image could match.
    """
    _check_text(key, "registry key")
    value = key
    # The kubelet's scheme check is case-sensitive: "HTTPS://x" would become "https://HTTPS://x".
    if value.startswith("https://"):
        value = value[len("https://") :]
    elif value.startswith("http://"):
        value = value[len("http://") :]
    elif "://" in value:
        raise InvalidRegistry("registry key has a scheme other than lower-case http or https")
    hostport, slash, path = value.partition("/")
    path = slash + path
    if "@" in hostport:
        raise InvalidRegistry("registry key has user info (credentials in the URL); put them in the entry")
    if "?" in path or "#" in path:
        raise InvalidRegistry("registry key has a query or fragment")
    host, port = split_host_port(hostport)
    _check_ip_or_labels(host, allow_glob=True)
    if not _PATH.match(path):
        raise InvalidRegistry("registry key path has characters an image name never has")
    if ".." in path.split("/"):
        raise InvalidRegistry("registry key path contains '..'")
    if path.startswith(("/v1/", "/v2/")):
        path = path[3:]
    # The host keeps its case: the kubelet matches it case-sensitively (filepath.Match per label).
    canonical_host = host + (f":{port}" if port is not None else "")
    if path in ("", "/"):
        return canonical_host
    return canonical_host + path


def mask_userinfo(key: str) -> str:
    """A registry key with any ``user:password@`` in its authority replaced by ``***@`` (for logs)."""
    scheme, sep, rest = key.partition("://")
    if not sep:
        scheme, rest = "", key
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return scheme + sep + authority + slash + path


def _go_b64decode(field: str) -> bytes:
    # Go's decoders skip \r and \n anywhere; any other stray character is an error.
    data = field.replace("\r", "").replace("\n", "")
    if field.strip().endswith("="):
        if not _B64_PADDED.match(data) or len(data) % 4:
            raise binascii.Error("invalid padded base64")
        return base64.b64decode(data, validate=True)
    if not _B64_RAW.match(data) or len(data) % 4 == 1:
        raise binascii.Error("invalid unpadded base64")
    return base64.b64decode(data + "=" * (-len(data) % 4), validate=True)


def decode_auth(field: str) -> tuple[str, str]:
    """Decode an ``auth`` value to ``(username, password)`` as the kubelet does.

    Raises ValueError with a message that never includes the value.
    """
    try:
        decoded = _go_b64decode(field)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("auth is not valid base64") from exc
    # Go converts bytes to string without validation; invalid UTF-8 is kept as replacement chars.
    text = decoded.decode("utf-8", "replace")
    username, sep, password = text.partition(":")
    if not sep:
        raise ValueError("auth does not decode to 'username:password'")
    return username, password
