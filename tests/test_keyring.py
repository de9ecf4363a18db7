"""The kubelet's keyring lookup: which config.json keys it tries for an image, in order."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeagent.model.keyring import image_registry_path, is_docker_hub_image, lookup, url_matches
from nodeagent.model.registries import InvalidRegistry


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


# -- the model against the kubelet's own keyring (tests/harness/kubelet) -------------------------------
_HOSTS = ["registry.example.com", "Registry.Example.com", "registry.example.com:5000", "docker.io", "index.docker.io",
          "[::1]:5000", "[::1]", "127.0.0.1:5000", "localhost:5000", "*.example.com", "ghcr.io"]  # fmt: skip
_KEY_FORMS = ["{h}", "https://{h}", "http://{h}/v2/", "https://{h}/v1/", "{h}/team", "{h}/team/app", "{h}/teamx"]
_IMAGES = ["nginx", "library/nginx", "foo/bar:1", "docker.io/library/nginx", "index.docker.io/foo/bar",
           "registry.example.com/team/app:1", "Registry.Example.com/team/app", "registry.example.com:5000/app",
           "a.example.com/team/app@sha256:" + "0" * 64, "[::1]:5000/app", "[::1]/app", "127.0.0.1:5000/team/x",
           "localhost:5000/team/app", "ghcr.io/team/app:v1"]  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    keys=st.lists(
        st.builds(lambda form, host: form.format(h=host), st.sampled_from(_KEY_FORMS), st.sampled_from(_HOSTS)),
        min_size=1, max_size=6,
    ),
    image=st.sampled_from(_IMAGES),
)  # fmt: skip
def test_lookup_model_agrees_with_the_kubelet(tmp_path_factory: Any, keys: list[str], image: str) -> None:
    """doctor's keyring model returns the same credentials, in the same order, as the kubelet's
    own keyring for the same config.json and image."""
    from nodeagent.model.keyring import kubelet_key
    from tests.real_parsers import kubelet_lookup

    unique: dict[str, str] = {}
    for key in keys:
        try:
            unique.setdefault(kubelet_key(key), key)  # one raw key per indexed key: Go's order among
        except InvalidRegistry:  # raw keys that index alike follows map iteration (random)
            continue
    if not unique:
        return
    creds = {key: (f"user{i}", f"pw{i}") for i, key in enumerate(unique.values())}
    root = tmp_path_factory.mktemp("kubelet")
    (root / "config.json").write_text(
        json.dumps(
            {"auths": {k: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()} for k, (u, p) in creds.items()}}
        )
    )
    matches, _ = lookup(image, list(creds))
    assert kubelet_lookup(root, image) == [creds[m.key] for m in matches]


_REFERENCE_PARTS = st.sampled_from(
    [
        *("nginx", "Nginx", "team/app", "team//app", "r.example.com", "r.example.com:5000", "localhost"),
        *("[::1]:5000", "a__b", "a___b", "a--b", "-a", "a.", "UPPER.example.com", "x" * 70, ":tag", ":v1.2"),
        *(":-bad", "@sha256:" + "a" * 64, "@sha256:" + "A" * 64, "@sha256:" + "a" * 63, "@sha512:" + "b" * 128),
        *("@md5:" + "c" * 32, "@", "!!", " ", "é", "0" * 64, "/", ".", "_"),
    ]
)
_VERDICTS: set[bool] = set()


@settings(max_examples=400, deadline=None)
@given(parts=st.lists(_REFERENCE_PARTS, min_size=1, max_size=4))
def test_image_reference_validity_agrees_with_the_kubelet(parts: list[str]) -> None:
    """doctor refuses exactly the image references the kubelet's ParseImageName refuses."""
    from nodeagent.model.keyring import image_reference_problem
    from tests.real_parsers import KubeletRejects, kubelet_keyring_lookup

    image = "".join(parts)
    try:
        kubelet_keyring_lookup(b'{"auths": {}}', image)
        kubelet_accepts = True
    except KubeletRejects:
        kubelet_accepts = False
    assert kubelet_accepts == (image_reference_problem(image) is None), image
    _VERDICTS.add(kubelet_accepts)


def test_the_reference_test_saw_both_verdicts() -> None:
    """The generated references included some the kubelet accepts and some it refuses."""
    test_image_reference_validity_agrees_with_the_kubelet()
    assert {True, False} == _VERDICTS
