"""--registry-config: per-registry TLS, mirrors and containerd auth mode, validated on load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.errors import SettingsError
from nodeagent.model.registry_settings import load_registry_settings, parse_registry_settings
from tests.tls import make_ca_and_server


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca, cert, key = make_ca_and_server(tmp_path)
    other = tmp_path / "other.key"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return {"ca": ca, "cert": cert, "key": key, "other": other}


def _load(text: str) -> object:
    return parse_registry_settings(text.encode(), source="regs.toml")


def test_full_example(pki: dict[str, Path]) -> None:
    """The documented example loads: file contents read, mirrors normalised, host lower-cased."""
    loaded = parse_registry_settings(
        f"""
[registries."Harbor.Internal:8443"]
ca = "{pki["ca"]}"
client_cert = "{pki["cert"]}"
client_key = "{pki["key"]}"
skip_verify = false
mirrors = ["https://Mirror.internal:5000/", "https://mirror.internal:5000"]
containerd_auth = "config"
""".encode(),
        source="regs.toml",
    )
    settings = loaded.registries["harbor.internal:8443"]
    assert (pki["ca"].read_bytes(), pki["cert"].read_bytes(), pki["key"].read_bytes()) == (
        settings.ca,
        settings.client_cert,
        settings.client_key,
    )
    assert ("https://mirror.internal:5000",) == settings.mirrors
    assert ((), "config") == (loaded.rejected, settings.containerd_auth)


def test_inline_pem_and_docker_hub_alias(pki: dict[str, Path]) -> None:
    """A CA may be the PEM itself; Docker Hub's aliases all mean containerd's docker.io."""
    pem = pki["ca"].read_text()
    loaded = parse_registry_settings(f'[registries."index.docker.io"]\nca = """{pem}"""\n'.encode(), source="regs.toml")
    assert ["docker.io"] == list(loaded.registries)
    assert pem.encode() == loaded.registries["docker.io"].ca


@pytest.mark.parametrize(
    ("table", "why"),
    [
        ('[registries."bad/host"]\nskip_verify = true', "path separator"),
        ('[registries."a.example"]\nca_file = "/x"', "unknown setting"),
        ('[registries."a.example"]\nca = "-----BEGIN CERTIFICATE-----\\nnope\\n-----END CERTIFICATE-----\\n"', "PEM"),
        ('[registries."a.example"]\nca = "/does/not/exist.crt"', "cannot be read"),
        ('[registries."a.example"]\nca = "relative.crt"', "absolute"),
        ('[registries."a.example"]\nclient_cert = "{cert}"', "together"),
        ('[registries."a.example"]\nclient_cert = "{cert}"\nclient_key = "{other}"', "does not match"),
        ('[registries."a.example"]\nclient_cert = "{cert}"\nclient_key = "{cert}"', "not a PEM private key"),
        ('[registries."a.example"]\nskip_verify = "yes"', "true or false"),
        ('[registries."a.example"]\nmirrors = ["ftp://m.example"]', "http"),
        ('[registries."a.example"]\nmirrors = ["https://user:pw@m.example"]', "user info"),
        ('[registries."a.example"]\nmirrors = ["https://m.example/a/../b"]', "unsafe path"),
        ('[registries."a.example"]\nmirrors = ["https://bad_host!"]', "mirror host"),
        ('[registries."a.example"]\ncontainerd_auth = "token"', "containerd_auth"),
        ('[registries."docker.io"]\ncontainerd_auth = "header"', "Docker Hub"),
    ],
)
def test_bad_registry_is_rejected_alone(pki: dict[str, Path], table: str, why: str) -> None:
    """One registry's bad setting rejects that registry, named; the good one still applies."""
    text = table.format(cert=pki["cert"], other=pki["other"]) + '\n[registries."good.example"]\nskip_verify = true\n'
    loaded = parse_registry_settings(text.encode(), source="regs.toml")
    assert ["good.example"] == list(loaded.registries)
    assert 1 == len(loaded.rejected)
    assert why in loaded.rejected[0].reason
    assert "regs.toml" == loaded.rejected[0].source


def test_duplicate_after_normalisation_is_rejected() -> None:
    """Two tables that mean the same containerd host: the second is rejected."""
    loaded = parse_registry_settings(
        b'[registries."docker.io"]\nmirrors = ["https://m.example"]\n'
        b'[registries."registry-1.docker.io"]\nskip_verify = true\n',
        source="regs.toml",
    )
    assert (["docker.io"], 1) == (list(loaded.registries), len(loaded.rejected))


def test_key_contents_never_in_messages(pki: dict[str, Path]) -> None:
    """A mismatched key's bytes appear in no problem message."""
    text = f'[registries."a.example"]\nclient_cert = "{pki["cert"]}"\nclient_key = "{pki["other"]}"\n'
    loaded = parse_registry_settings(text.encode(), source="regs.toml")
    secret_line = pki["other"].read_text().splitlines()[1]
    assert all(secret_line not in str(p) for p in loaded.rejected)


@pytest.mark.parametrize("text", [b"[registries\n", b"registries = 3\n", b"other = 1\n", b"\xff\xfe"])
def test_unusable_file_is_a_settings_error(text: bytes) -> None:
    """A file that is not TOML, or not a table of registries, fails as a whole (at start)."""
    with pytest.raises(SettingsError):
        parse_registry_settings(text, source="regs.toml")


def test_missing_file_is_a_settings_error(tmp_path: Path) -> None:
    """--registry-config naming a missing file fails at start with the path named."""
    with pytest.raises(SettingsError, match=r"nope\.toml"):
        load_registry_settings(str(tmp_path / "nope.toml"))


def test_warnings_for_skip_verify_and_expired_ca(tmp_path: Path) -> None:
    """skip_verify and an expired CA are applied, with a warning each."""
    from tests.test_doctor import _ca

    ca = tmp_path / "old.crt"
    ca.write_bytes(_ca(tmp_path, expired=True))
    loaded = parse_registry_settings(
        f'[registries."a.example"]\nca = "{ca}"\nskip_verify = true\n'.encode(), source="regs.toml"
    )
    assert (["a.example"], 2) == (list(loaded.registries), len(loaded.warnings))


_KNOWN = {"ca", "client_cert", "client_key", "skip_verify", "mirrors", "override_path", "containerd_auth"}
_values = st.recursive(
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=40)
    | st.sampled_from(["/etc/passwd", "../x", "https://m.example", "http://[::1]:5000", "-----BEGIN CERTIFICATE-----"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=3),
    max_leaves=8,
)
_tables = st.dictionaries(
    st.text(max_size=30) | st.sampled_from(["docker.io", "a.example:5000", "[::1]:5000", "../etc", "a/b", "*.x"]),
    st.dictionaries(
        st.sampled_from(
            ["ca", "client_cert", "client_key", "skip_verify", "mirrors", "override_path", "containerd_auth"]
        )
        | st.text(max_size=10),
        _values,
        max_size=4,
    ),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(tables=_tables)
def test_hostile_settings_never_crash(tables: dict[str, Any]) -> None:
    """Any settings document either loads (bad registries rejected alone, with a reason) or is a
    SettingsError; every accepted host passes the strict validator, and no file is read but
    absolute paths the document names."""
    import tomlkit

    from nodeagent.model.registries import validate_registry_host

    read: list[str] = []

    def read_file(path: str) -> bytes:
        read.append(path)
        raise FileNotFoundError(2, "No such file or directory")

    text = tomlkit.dumps({"registries": tables})
    try:
        loaded = parse_registry_settings(text.encode(), source="regs.toml", read_file=read_file)
    except SettingsError:
        return
    for host in loaded.registries:
        validate_registry_host(host)
    assert all(p.reason for p in loaded.rejected)
    assert all(path.startswith("/") for path in read)
