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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# The matching rules live in the plugin, which the kubelet runs on the host with the standard
# library only: doctor's model and the plugin's answers are one implementation.
from nodeagent.ecr.plugin import DEFAULT_REGISTRY, is_docker_hub_image, keyring_key, url_matches
from nodeagent.model.registries import InvalidRegistry, normalise_key

__all__ = [
    "Match",
    "image_registry_path",
    "is_docker_hub_image",
    "kubelet_key",
    "lookup",
    "normalise_image",
    "url_matches",
]


@dataclass(frozen=True)
class Match:
    key: str  # as written in config.json
    normalised: str
    reason: str


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
    return keyring_key(key)


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
