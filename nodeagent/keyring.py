"""Which credentials the kubelet tries for an image, in order: its keyring lookup, as pure code.

A model of the kubelet's ``pkg/credentialprovider/keyring.go`` (k8s 1.34) for ``doctor``, compared
with the kubelet's own code in tests/test_keyring.py (through the Go harness):

* the image is first normalised as the kubelet's image puller does (``ParseImageName``):
  ``nginx`` is ``docker.io/library/nginx``, ``foo/bar`` is ``docker.io/foo/bar``; tag and digest go;
* a ``config.json`` key becomes ``host + path`` as Go's ``url.Parse`` reads ``https://KEY``: the
  host keeps its case (matching is case-sensitive), a ``/v1/`` or ``/v2/`` path prefix goes;
* every key that matches is tried, in reverse lexical order (``registry/team/app`` before
  ``registry/team`` before ``registry``); matching needs equal ports (no port only matches no port,
  the port split as ``net.SplitHostPort`` does, so ``[::1]:5000`` is host ``::1``), the same number
  of DNS labels, a glob match per label and the key's path as a raw string prefix;
* only when nothing matched does a Docker Hub image get the ``index.docker.io`` credentials.

Credential-provider ``matchImages`` use the same matching.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nodeagent.registries import InvalidRegistry, normalise_key

__all__ = [
    "Match",
    "image_registry_path",
    "is_docker_hub_image",
    "kubelet_key",
    "lookup",
    "normalise_image",
    "url_matches",
]

DEFAULT_REGISTRY = "index.docker.io"


@dataclass(frozen=True)
class Match:
    key: str  # as written in config.json
    normalised: str
    reason: str


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
    if not all(fnmatch.fnmatchcase(t, p) for p, t in zip(p_labels, t_labels, strict=True)):
        return False
    return t_path.startswith(p_path)


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


def image_registry_path(image: str) -> str:
    """``host[:port]/path`` of an image reference, without tag or digest."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name[: name.rfind(":")]
    return name


def normalise_image(image: str) -> str:
    """The repository the kubelet looks credentials up for (``ParseImageName``): Docker Hub
    names get ``docker.io/`` (and ``library/`` when they have one component)."""
    name = image_registry_path(image)
    first, slash, rest = name.partition("/")
    if not slash or not (any(ch in first for ch in ".:") or first == "localhost" or first.lower() != first):
        name = f"docker.io/{name}"
        first, _, rest = name.partition("/")
    if first in ("docker.io", "index.docker.io"):
        first = "docker.io"
        if "/" not in rest:
            rest = f"library/{rest}"
        name = f"{first}/{rest}"
    return name


def kubelet_key(key: str) -> str:
    """A config.json key as the kubelet's keyring indexes it (the host's case kept)."""
    normalise_key(key)  # raises InvalidRegistry for keys no image could match
    value = key if key.startswith(("https://", "http://")) else f"https://{key}"
    rest = value.split("://", 1)[1]
    host, slash, path = rest.partition("/")
    path = slash + path
    if path.startswith(("/v1/", "/v2/")):
        path = path[3:]
    return host if path in ("", "/") else host + path


def lookup(
    image: str, keys: Iterable[str], provider_patterns: Sequence[tuple[str, str]] = ()
) -> tuple[list[Match], list[str]]:
    """The config.json keys the kubelet tries for ``image`` (in order), and the matching providers."""
    target = normalise_image(image)
    index: dict[str, list[str]] = {}
    for key in keys:
        try:
            index.setdefault(kubelet_key(key), []).append(key)
        except InvalidRegistry:
            continue
    matches: list[Match] = []
    for indexed in sorted(index, reverse=True):
        if url_matches(indexed, target):
            matches.extend(Match(k, indexed, "matches the image") for k in index[indexed])
    if not matches and is_docker_hub_image(target) and DEFAULT_REGISTRY in index:
        matches = [Match(k, DEFAULT_REGISTRY, "Docker Hub fallback (index.docker.io)") for k in index[DEFAULT_REGISTRY]]
    providers = sorted({name for name, pattern in provider_patterns if url_matches(pattern, target)})
    return matches, providers
