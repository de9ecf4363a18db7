"""Amazon ECR: the kubelet credential-provider plugin (stdlib only) and the agent's token manager."""
