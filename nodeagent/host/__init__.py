"""The host: the one writer of node files (``hostfs``) and containerd's process (restarts)."""
