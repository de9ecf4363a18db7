# Quick start: `make demo` and `make test` on a fresh Debian machine with Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= .demo

.PHONY: demo test lint typecheck unit bench lock image system-deps k8s harness clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install when the project's metadata changes. The build backend's warnings go to a log, shown
# only when the install fails.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]' 2>$(VENV)/install.log || { cat $(VENV)/install.log; exit 1; }
	touch $@

# The demo runs the agent alone: the package and its runtime dependencies, not the test tools.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e . 2>$(VENV)/install.log || { cat $(VENV)/install.log; exit 1; }
	touch $@

demo: $(VENV)/.installed-run
	rm -rf $(DEMO) && mkdir -p $(DEMO)/host
	cp -r examples/node/. $(DEMO)/host/
	@echo "== node before: a foreign config.json with its own entries and credsStore, containerd with its own hosts.toml"
	@echo "-- /var/lib/kubelet/config.json (auth values masked)"
	@$(BIN)/python -c 'import json,sys; d=json.load(open(sys.argv[1])); \
	    [e.update(auth="***") for e in d["auths"].values() if "auth" in e]; print(json.dumps(d, indent=2))' \
	    $(DEMO)/host/var/lib/kubelet/config.json
	@cd $(DEMO)/host && for f in etc/containerd/config.toml etc/containerd/certs.d/*/hosts.toml; do \
	    echo "-- /$$f"; cat "$$f"; done
	$(BIN)/nodeagent sync --once --from-file examples/dockerconfigjson.json --host-root $(DEMO)/host \
	    --registry-config examples/registries.toml --log-format console; \
	    echo "exit code $$? (3 = applied, one entry rejected)"
	@echo "== node after sync (secrets masked)"
	$(BIN)/nodeagent show --host-root $(DEMO)/host
	@echo "== doctor: which credentials the kubelet would use for an image, and what looks wrong"
	$(BIN)/nodeagent doctor --no-discover --host-root $(DEMO)/host --image registry.example.com/team/app:1.0 \
	    || echo "(doctor exit code $$?: 1 = warnings, 2 = failures)"
	@echo "== second sync writes nothing"
	$(BIN)/nodeagent sync --once --from-file examples/dockerconfigjson.json --host-root $(DEMO)/host \
	    --registry-config examples/registries.toml --log-format console || true
	@echo "== cleanup restores the node's own entries"
	$(BIN)/nodeagent cleanup --host-root $(DEMO)/host --log-format console
	cat $(DEMO)/host/var/lib/kubelet/config.json | $(BIN)/python -c \
	    'import json,sys; d=json.load(sys.stdin); print("auths:", sorted(d["auths"]), "credsStore:", d.get("credsStore"))'
	@echo "== containerd: only the node's own hosts.toml directory is left"
	ls $(DEMO)/host/etc/containerd/certs.d

lint: $(VENV)/.installed
	$(BIN)/ruff check nodeagent tests benchmarks
	$(BIN)/ruff format --check nodeagent tests benchmarks
	$(BIN)/lint-imports --no-cache

typecheck: $(VENV)/.installed
	$(BIN)/mypy

unit: $(VENV)/.installed system-deps
	$(BIN)/pytest -q

# The real Kubernetes code the tests judge nodeagent with, built from the Go module proxy
# (scripts/build-harness.sh; a second run with nothing changed is a no-op): the kubelet's
# credential code (kubelet-credentials), kube-apiserver and etcd of k8s 1.34.4 into .cache/k8s/bin/.
k8s:
	scripts/build-harness.sh kubelet .cache/k8s/bin

# All real-consumer harnesses: k8s, and containerd 1.6.20's hosts.toml loader.
harness: k8s
	scripts/build-harness.sh containerd .cache/harness/bin

# Debian packages the end-to-end tests use (image build, registry, containerd; curl and openssl
# for scripts/kube-apiserver.sh): installed when missing and root.
SYSTEM_PACKAGES := buildah debootstrap docker-registry containerd curl openssl
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null 2>&1 || \
	    [ -x /usr/sbin/$$p ] || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then \
	        echo "installing$$missing"; apt-get update -qq && \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	    else echo "missing Debian packages:$$missing (install them, or the image tests fail in CI)"; fi; \
	fi

test: lint typecheck system-deps harness unit

# Build the container image offline (scripts/build-image.sh): IMAGE=..., BASE_IMAGE=... or local.
image: $(VENV)/.installed
	PYTHON=$(BIN)/python scripts/build-image.sh

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/run.py

# Re-pin the image's runtime dependencies (with hashes) after changing pyproject.toml.
lock: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet pip-tools
	rm -f requirements.lock
	$(BIN)/pip-compile --quiet --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links \
	    -o requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .mypy_cache .ruff_cache .hypothesis
