"""The kubelet's keyring lookup: which config.json keys it tries for an image, in order."""

from __future__ import annotations

import pytest

from nodeagent.keyring import image_registry_path, is_docker_hub_image, lookup, url_matches


@pytest.mark.parametrize(
    ("pattern", "target", "expected"),
    [
        ("registry.example.com", "registry.example.com/team/app", True),
        ("registry.example.com:5000", "registry.example.com/team/app", False),
        ("registry.example.com", "registry.example.com:5000/team/app", False),
        ("registry.example.com:5000", "registry.example.com:5000/app", True),
        ("*.example.com", "registry.example.com/app", True),
        ("*.example.com", "example.com/app", False),
        ("*.example.com", "a.b.example.com/app", False),
        ("registry.example.com/team", "registry.example.com/team/app", True),
        ("registry.example.com/team", "registry.example.com/teamx/app", True),
        ("registry.example.com/team/", "registry.example.com/other/app", False),
        ("*.dkr.ecr.*.amazonaws.com", "123456789012.dkr.ecr.us-east-1.amazonaws.com/app", True),
    ],
)
def test_url_matches(pattern: str, target: str, expected: bool) -> None:
    """Globs per label, same label count, exact ports, raw path prefix."""
    assert expected == url_matches(pattern, target)


@pytest.mark.parametrize(
    ("image", "expected"),
    [("nginx", True), ("library/nginx", True), ("docker.io/x/y", True), ("index.docker.io/x", True),
     ("registry.example.com/x", False), ("localhost:5000/x", False), ("foo/bar", True)],
)  # fmt: skip
def test_docker_hub_images(image: str, expected: bool) -> None:
    """Images without a registry (and docker.io ones) are Docker Hub images."""
    assert expected == is_docker_hub_image(image)


def test_order_most_specific_first_and_hub_fallback() -> None:
    """Longer path prefixes come first; Docker Hub images also get index.docker.io."""
    keys = [
        "registry.example.com",
        "registry.example.com/team",
        "https://registry.example.com/v2/team/app",
        "https://index.docker.io/v1/",
    ]
    matches, _ = lookup("registry.example.com/team/app:1.0", keys)
    assert ["https://registry.example.com/v2/team/app", "registry.example.com/team", "registry.example.com"] == [
        m.key for m in matches
    ]
    hub, _ = lookup("nginx:1.27", keys)
    assert ["https://index.docker.io/v1/"] == [m.key for m in hub]


def test_providers_matched() -> None:
    """A credential provider whose matchImages match the image is reported."""
    _, providers = lookup(
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/app@sha256:" + "a" * 64,
        [],
        [("ecr", "*.dkr.ecr.*.amazonaws.com")],
    )
    assert ["ecr"] == providers


@pytest.mark.parametrize(
    ("image", "path"),
    [
        ("nginx:1.27", "nginx"),
        ("r.example.com:5000/a/b:tag", "r.example.com:5000/a/b"),
        ("r/a@sha256:abc", "r/a"),
        ("r.example.com:5000/a", "r.example.com:5000/a"),
    ],
)
def test_image_registry_path(image: str, path: str) -> None:
    """Tags and digests are dropped; ports are kept."""
    assert path == image_registry_path(image)
