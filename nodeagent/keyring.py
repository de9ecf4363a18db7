"""Which credentials the kubelet tries for an image, in order: its keyring lookup, as pure code.

From the kubelet's ``pkg/credentialprovider/keyring.go`` (summarised in design.md): every
``config.json`` key whose normalised form matches the image is tried, in reverse lexical order
of the normalised keys (so ``registry/team/app`` before ``registry/team`` before ``registry``);
matching needs the same number of DNS labels, a glob match per label, equal ports (no port only
matches no port) and the key's path as a raw string prefix of the image's path. Docker Hub
images (no registry, ``docker.io/...`` or ``index.docker.io/...``) then also get the
``index.docker.io`` credentials. Credential-provider ``matchImages`` use the same matching.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nodeagent.registries import InvalidRegistry, normalise_key

__all__ = ["Match", "image_registry_path", "is_docker_hub_image", "lookup", "url_matches"]

DEFAULT_REGISTRY = "index.docker.io"


@dataclass(frozen=True)
class Match:
    key: str  # as written in config.json
    normalised: str
    reason: str


def _split(value: str) -> tuple[str, str | None, str]:
    hostport, _, path = value.partition("/")
    host, port = hostport, None
    if hostport.startswith("["):
        end = hostport.find("]")
        host, rest = hostport[: end + 1], hostport[end + 1 :]
        port = rest[1:] if rest.startswith(":") else None
    elif ":" in hostport:
        host, port = hostport.rsplit(":", 1)
    return host, port, path


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


def lookup(
    image: str, keys: Iterable[str], provider_patterns: Sequence[tuple[str, str]] = ()
) -> tuple[list[Match], list[str]]:
    """The config.json keys the kubelet tries for ``image`` (in order), and the matching providers."""
    target = image_registry_path(image)
    index: dict[str, list[str]] = {}
    for key in keys:
        try:
            index.setdefault(normalise_key(key), []).append(key)
        except InvalidRegistry:
            continue
    matches: list[Match] = []
    for normalised in sorted(index, reverse=True):
        if url_matches(normalised, target):
            matches.extend(Match(k, normalised, "matches the image") for k in index[normalised])
    if is_docker_hub_image(image) and DEFAULT_REGISTRY in index:
        seen = {m.key for m in matches}
        matches.extend(
            Match(k, DEFAULT_REGISTRY, "Docker Hub fallback (index.docker.io)")
            for k in index[DEFAULT_REGISTRY]
            if k not in seen
        )
    providers = sorted({name for name, pattern in provider_patterns if url_matches(pattern, target)})
    return matches, providers
