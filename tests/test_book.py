"""The source book, in-process: each source's status and last good content, node scoping, and
the desired state (the policy that bad input or a missing permission never takes credentials away)."""

from __future__ import annotations

import pytest

from nodeagent.agent.book import SourceBook
from nodeagent.model.credentials import ParseResult, parse_docker_config
from nodeagent.sources import SourceUpdate
from tests.conftest import docker_config

A, B = "secret:ns/a", "secret:ns/b"


def _data(source: str, registry: str, selector: str | None = None) -> SourceUpdate:
    result = parse_docker_config(docker_config({registry: ("u", "p")}), source=source)
    return SourceUpdate(source, "data", 0.0, result=result, node_selector=selector)


def _registries(results: list[ParseResult]) -> list[str]:
    return [c.registry for r in results for c in r.credentials]


def test_desired_follows_the_sources_in_order() -> None:
    """Valid sources apply in the order given; nothing is held."""
    book = SourceBook([A, B])
    book.record(_data(B, "b.example"))
    book.record(_data(A, "a.example"))
    results, hold_all, why = book.desired()
    assert (["a.example", "b.example"], False, []) == (_registries(results), hold_all, why)


@pytest.mark.parametrize("kind", ["invalid", "unreadable", "deleted"])
def test_a_bad_source_keeps_its_last_good_content(kind: str) -> None:
    """Invalid, unreadable (401/403) or deleted (policy keep): the last good content still applies."""
    book = SourceBook([A])
    book.record(_data(A, "a.example"))
    recorded = book.record(SourceUpdate(A, kind, 0.0, error="x"))  # type: ignore[arg-type]
    results, hold_all, _ = book.desired()
    assert (kind, "valid", True, ["a.example"], False) == (
        recorded.status,
        recorded.previous,
        recorded.kept_last_good,
        _registries(results),
        hold_all,
    )


@pytest.mark.parametrize(
    ("kind", "holds"), [("invalid", True), ("unreadable", True), ("deleted", True), ("absent", True)]
)
def test_a_source_with_nothing_good_holds_the_node(kind: str, holds: bool) -> None:
    """A source that never gave good content holds what the node has, and says why."""
    book = SourceBook([A, B])
    book.record(_data(B, "b.example"))
    book.record(SourceUpdate(A, kind, 0.0, error="x"))  # type: ignore[arg-type]
    results, hold_all, why = book.desired()
    assert (["b.example"], holds, [f"{A}: {kind} with no last good content"]) == (_registries(results), hold_all, why)


def test_deleted_with_remove_policy_takes_the_credentials_away() -> None:
    """on_secret_deleted=remove: a deleted Secret's credentials go, and nothing is held."""
    book = SourceBook([A], on_deleted="remove")
    book.record(_data(A, "a.example"))
    book.record(SourceUpdate(A, "deleted", 0.0))
    assert ([], False) == (book.desired()[0], book.desired()[1])


def test_node_scoping() -> None:
    """A node-scoped source applies only when the node's labels match; before the labels are known
    everything is held; an unreadable update keeps the scoping the source had."""
    book = SourceBook([A])
    book.record(_data(A, "gpu.example", selector="pool in (gpu)"))
    assert (True, [f"{A}: node labels not known yet"]) == book.desired()[1:]
    assert book.set_node_labels({"pool": "cpu"})
    assert ([], False) == book.desired()[:2]
    assert not book.set_node_labels({"pool": "cpu"})
    book.set_node_labels({"pool": "gpu"})
    book.record(SourceUpdate(A, "unreadable", 0.0, error="403 Forbidden"))
    assert ["gpu.example"] == _registries(book.desired()[0])
    book.set_node_labels({"pool": "cpu"})
    assert [] == book.desired()[0]


def test_a_bad_selector_is_an_invalid_source() -> None:
    """An unparseable node-selector annotation makes the source invalid, naming the annotation."""
    book = SourceBook([A])
    recorded = book.record(_data(A, "a.example", selector="pool in ("))
    assert "invalid" == recorded.status
    assert "nodeagent.io/node-selector" in (recorded.error or "")


def test_reporting_state() -> None:
    """Who has not reported, who is unreadable, and whether every source was read."""
    book = SourceBook([A, B])
    assert (False, [A, B], False) == (book.all_reported(), book.waiting(), book.fully_read())
    book.record(_data(A, "a.example"))
    book.record(SourceUpdate(B, "unreadable", 0.0, error="403 Forbidden"))
    assert (True, [], [f"{B} (403 Forbidden)"], False) == (
        book.all_reported(),
        book.waiting(),
        book.unreadable(),
        book.fully_read(),
    )
    book.record(_data(B, "b.example"))
    assert ([], True) == (book.unreadable(), book.fully_read())
