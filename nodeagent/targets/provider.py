"""The credential-provider target: the plugin file and our entry in the kubelet's
``CredentialProviderConfig``. Pure renderers, like every target.

The config is YAML or JSON by the file's extension (the kubelet accepts both); when the
configured path is a directory (kubelet >= 1.34 merges every ``*.json|*.yaml|*.yml`` in it), the
agent writes a file of its own there. Other providers are kept; a foreign provider with our name
is parked in the ledger and restored when ours goes away. YAML comments are not preserved by a
merge (PyYAML does not keep them); JSON and YAML key order is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from nodeagent.decoding import DecodeError, loads_json, loads_yaml
from nodeagent.errors import TargetError
from nodeagent.ledger import FileRecord

__all__ = [
    "CONFIG_TARGET",
    "PLUGIN_NAME",
    "PLUGIN_TARGET",
    "PROVIDER_CONFIG_FILE",
    "ProviderRender",
    "match_images",
    "plugin_bytes",
    "provider_config_problem",
    "render_plugin",
    "render_provider_config",
]

PLUGIN_NAME = "nodeagent-ecr-credential-provider"
PLUGIN_TARGET = "provider-plugin"
PROVIDER_CONFIG_FILE = "nodeagent-ecr.yaml"
"""Our own file when the configured provider config path is a directory (kubelet >= 1.34)."""
CONFIG_TARGET = "provider-config"
CONFIG_API_VERSIONS = ("kubelet.config.k8s.io/v1", "kubelet.config.k8s.io/v1beta1", "kubelet.config.k8s.io/v1alpha1")
PROVIDER_API_VERSION = "credentialprovider.kubelet.k8s.io/v1"
DEFAULT_CACHE_DURATION = "6h"
"""The kubelet's cache when a response has no cacheDuration; ours always sends one (half the
token's remaining life), so this only matters if an answer lacks it."""

_DOMAINS = (
    "amazonaws.com",
    "amazonaws.com.cn",
    "amazonaws.eu",
    "on.aws",
    "on.amazonwebservices.com.cn",
    "sc2s.sgov.gov",
    "c2s.ic.gov",
    "cloud.adc-e.uk",
    "csp.hci.ic.gov",
)


def match_images() -> list[str]:
    """``matchImages`` globs for every host form the reference ECR provider accepts."""
    patterns = [
        f"*.dkr{sep}ecr{fips}.*.{domain}" for domain in _DOMAINS for sep in (".", "-") for fips in ("", "-fips")
    ]
    return [*patterns, "public.ecr.aws", "ecr-public.aws.com"]


def plugin_bytes() -> bytes:
    """The plugin file as shipped in the package (this exact file is copied to the node)."""
    return resources.files("nodeagent.ecr").joinpath("plugin.py").read_bytes()


@dataclass(frozen=True)
class ProviderRender:
    content: bytes | None
    record: FileRecord


def render_plugin(*, install: bool, current: bytes | None, record: FileRecord | None, path: str) -> ProviderRender:
    """The plugin binary: written when installing, removed when not (only if the agent created it)."""
    if install:
        if current is not None and record is None and current != plugin_bytes():
            raise TargetError(path, "a different file with the plugin's name exists; refusing to overwrite it")
        created = record.created if record is not None else current is None
        return ProviderRender(plugin_bytes(), FileRecord(PLUGIN_TARGET, created, {PLUGIN_NAME: "plugin"}))
    if record is None:
        return ProviderRender(current, FileRecord(PLUGIN_TARGET))
    return ProviderRender(None if record.created else current, FileRecord(PLUGIN_TARGET))


def provider_entry(args: list[str]) -> dict[str, Any]:
    return {
        "name": PLUGIN_NAME,
        "matchImages": match_images(),
        "defaultCacheDuration": DEFAULT_CACHE_DURATION,
        "apiVersion": PROVIDER_API_VERSION,
        "args": list(args),
    }


def _load(current: bytes, path: str, fmt: str) -> dict[str, Any]:
    try:
        document = loads_json(current) if fmt == "json" else loads_yaml(current)
    except DecodeError as exc:
        raise TargetError(path, f"the existing file cannot be used ({exc}); refusing to change it") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise TargetError(path, "the existing file is not a CredentialProviderConfig object")
    if document.get("kind", "CredentialProviderConfig") != "CredentialProviderConfig":
        raise TargetError(path, "the existing file is not a CredentialProviderConfig")
    if document.get("apiVersion", CONFIG_API_VERSIONS[0]) not in CONFIG_API_VERSIONS:
        raise TargetError(path, "the existing CredentialProviderConfig has an unknown apiVersion")
    if not isinstance(document.get("providers", []), list):
        raise TargetError(path, "the existing 'providers' is not a list")
    problem = provider_config_problem(document)
    if problem is not None:
        raise TargetError(path, f"the kubelet would refuse this CredentialProviderConfig ({problem}); not changed")
    return document


_CONFIG_FIELDS = frozenset({"apiVersion", "kind", "providers"})
_PROVIDER_FIELDS = frozenset(
    {"name", "matchImages", "defaultCacheDuration", "apiVersion", "args", "env", "tokenAttributes"}
)
_ENV_FIELDS = frozenset({"name", "value"})
_TOKEN_FIELDS = frozenset(
    {
        "serviceAccountTokenAudience",
        "cacheType",
        "requireServiceAccount",
        "requiredServiceAccountAnnotationKeys",
        "optionalServiceAccountAnnotationKeys",
    }
)


def provider_config_problem(document: dict[str, Any]) -> str | None:
    """Why the kubelet (1.34) would refuse a CredentialProviderConfig at start, for the classes a
    merge could carry along: unknown fields (its decoder is strict), ``tokenAttributes`` under a
    plugin apiVersion other than v1, duplicate provider names. None when none applies. A model for
    run time, compared with the kubelet's own loader in tests/test_kubelet_real.py."""
    unknown = sorted(set(document) - _CONFIG_FIELDS)
    if unknown:
        return f"unknown field {unknown[0]!r}"
    names: set[str] = set()
    for index, provider in enumerate(document.get("providers") or []):
        if not isinstance(provider, dict):
            return f"providers[{index}] is not an object"
        unknown = sorted(set(provider) - _PROVIDER_FIELDS)
        if unknown:
            return f"unknown field 'providers[{index}].{unknown[0]}'"
        for env in provider.get("env") or []:
            if not isinstance(env, dict) or set(env) - _ENV_FIELDS:
                return f"providers[{index}].env has an entry with fields other than name and value"
        tokens = provider.get("tokenAttributes")
        if tokens is not None:
            if not isinstance(tokens, dict) or set(tokens) - _TOKEN_FIELDS:
                return f"providers[{index}].tokenAttributes has unknown fields"
            if provider.get("apiVersion") != PROVIDER_API_VERSION:
                return f"providers[{index}].tokenAttributes needs apiVersion {PROVIDER_API_VERSION}"
        name = provider.get("name")
        if isinstance(name, str):
            if name in names:
                return f"provider name {name!r} is given twice"
            names.add(name)
    return None


def render_provider_config(
    *, args: list[str] | None, current: bytes | None, record: FileRecord | None, path: str
) -> ProviderRender:
    """Merge (``args`` given) or remove (``args`` None) our provider entry."""
    fmt = "json" if path.endswith(".json") else "yaml"
    old = record or FileRecord(CONFIG_TARGET, created=current is None)
    if current is None and args is None:
        return ProviderRender(None, FileRecord(CONFIG_TARGET))
    document = _load(current, path, fmt) if current is not None else {}
    providers = [
        p
        for p in document.get("providers", [])
        if not (isinstance(p, dict) and p.get("name") == PLUGIN_NAME and PLUGIN_NAME in old.owned)
    ]
    new = FileRecord(CONFIG_TARGET, created=old.created or current is None)
    foreign_ours = [p for p in providers if isinstance(p, dict) and p.get("name") == PLUGIN_NAME]
    if args is not None:
        if foreign_ours:
            new.originals[PLUGIN_NAME] = foreign_ours[-1]
            providers = [p for p in providers if p not in foreign_ours]
        elif PLUGIN_NAME in old.originals:
            new.originals[PLUGIN_NAME] = old.originals[PLUGIN_NAME]
        providers.append(provider_entry(args))
        new.owned[PLUGIN_NAME] = "provider"
    elif PLUGIN_NAME in old.originals and not foreign_ours:
        providers.append(old.originals[PLUGIN_NAME])
    if not providers and new.created and set(document) <= {"apiVersion", "kind", "providers"}:
        return ProviderRender(None, FileRecord(CONFIG_TARGET))
    document.setdefault("apiVersion", CONFIG_API_VERSIONS[0])
    document.setdefault("kind", "CredentialProviderConfig")
    document["providers"] = providers
    if fmt == "json":
        content = (json.dumps(document, indent=2) + "\n").encode()
    else:
        content = yaml.safe_dump(document, sort_keys=False, default_flow_style=False).encode()
    return ProviderRender(content, new)
