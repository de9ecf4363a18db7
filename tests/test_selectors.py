"""Label selectors for node scoping, in the kubectl -l syntax."""

from __future__ import annotations

import pytest

from nodeagent.model.selectors import InvalidSelector, parse_selector


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("", {}, True),
        ("pool=gpu", {"pool": "gpu"}, True),
        ("pool==gpu", {"pool": "cpu"}, False),
        ("pool!=gpu", {}, True),
        ("pool!=gpu", {"pool": "gpu"}, False),
        ("pool in (gpu, tpu)", {"pool": "tpu"}, True),
        ("pool notin (gpu,tpu)", {"pool": "tpu"}, False),
        ("pool notin (gpu)", {}, True),
        ("node-role.kubernetes.io/worker", {"node-role.kubernetes.io/worker": ""}, True),
        ("!spot", {"spot": "true"}, False),
        ("pool in (gpu), !spot, zone=a", {"pool": "gpu", "zone": "a"}, True),
    ],
)
def test_matches(text: str, labels: dict[str, str], expected: bool) -> None:
    """Each requirement kind matches as in Kubernetes."""
    assert expected == parse_selector(text).matches(labels)


@pytest.mark.parametrize("text", ["pool in (gpu", "pool)", "=x", "pool in gpu", "a b", "pool=in valid"])
def test_invalid(text: str) -> None:
    """Malformed selectors are rejected."""
    with pytest.raises(InvalidSelector):
        parse_selector(text)
