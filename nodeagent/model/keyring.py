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

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# The matching rules live in the plugin, which the kubelet runs on the host with the standard
# library only: doctor's model and the plugin's answers are one implementation.
from nodeagent.ecr.plugin import DEFAULT_REGISTRY, is_docker_hub_image, keyring_key, url_matches
from nodeagent.model.registries import InvalidRegistry, normalise_key

__all__ = [
    "Match",
    "image_reference_problem",
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


# The image reference grammar of github.com/distribution/reference, which the kubelet's
# ParseImageName applies (ParseNormalizedNamed): Go's \w is ASCII.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[(?:[a-fA-F0-9:]+)\])"
_NAME = rf"(?:{_HOST}(?::[0-9]+)?/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_REFERENCE = re.compile(
    rf"(?P<name>{_NAME})(?::[\w][\w.-]{{0,127}})?"
    r"(?:@(?P<algorithm>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*):(?P<hex>[0-9a-fA-F]{32,}))?",
    re.ASCII,
)
_DIGEST_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}


def image_reference_problem(image: str) -> str | None:
    """Why the kubelet's image puller would refuse ``image`` as a reference, or None: a model of
    ``ParseNormalizedNamed`` (compared with the kubelet's own in tests/test_keyring.py)."""
    if re.fullmatch(r"[a-f0-9]{64}", image):
        return "a 64-character hexadecimal string is an image ID, not a repository name"
    first, slash, rest = image.partition("/")
    domain_given = bool(slash) and (any(ch in first for ch in ".:") or first == "localhost" or first.lower() != first)
    remainder = rest if domain_given else image
    if remainder.split(":", 1)[0] != remainder.split(":", 1)[0].lower():
        return "the repository name must be lowercase"
    normalised = image if domain_given else f"docker.io/{image}"
    match = _REFERENCE.fullmatch(normalised)
    if match is None:
        return "not a valid image reference (name[:tag][@digest], lowercase path components)"
    if len(match["name"]) > 255:
        return "the repository name is longer than 255 characters"
    if match["algorithm"] is not None:
        length = _DIGEST_LENGTHS.get(match["algorithm"])
        if length is None:
            return f"unsupported digest algorithm {match['algorithm'][:20]!r}"
        if len(match["hex"]) != length or match["hex"] != match["hex"].lower():
            return f"a {match['algorithm']} digest is {length} lowercase hexadecimal characters"
    return None


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
