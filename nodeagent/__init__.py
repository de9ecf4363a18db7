"""nodeagent: writes a node's registry credentials from central dockerconfigjson Secrets."""

__version__ = "0.1.0"
