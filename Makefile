# healthscope — build, test, demo.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO        ?= cargo
TESTENV_DIR  := target/testenv
TESTENV_BIN  := $(TESTENV_DIR)/kube-testenv
TOOLS_DIR    := target/tools
# The Kubernetes release tests/apiserver pins (see tests/apiserver/go.mod).
K8S_VERSION  := $(shell sed -n 's/^\tk8s.io\/kubernetes v\(.*\)/\1/p; s/^require k8s.io\/kubernetes v\(.*\)/\1/p' tests/apiserver/go.mod | head -1)
GO_LDFLAGS   := -X k8s.io/component-base/version.gitVersion=v$(K8S_VERSION) \
                -X k8s.io/component-base/version.gitMajor=$(word 1,$(subst ., ,$(K8S_VERSION))) \
                -X k8s.io/component-base/version.gitMinor=$(word 2,$(subst ., ,$(K8S_VERSION))) \
                -X k8s.io/component-base/version.gitTreeState=clean
export GOTOOLCHAIN := local
export PATH := $(CURDIR)/$(TOOLS_DIR)/bin:$(PATH)

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: build
build: ## Build healthscope (debug)
	$(CARGO) build

.PHONY: test
test: testenv tools ## Run every test: unit, and integration against a real kube-apiserver
	KUBE_TESTENV_BIN=$(CURDIR)/$(TESTENV_BIN) KUBE_TESTENV_REQUIRED=1 $(CARGO) test --all-targets

.PHONY: lint
lint: ## Check formatting and run clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	cd tests/apiserver && gofmt -l . | (! grep .) && go vet .

.PHONY: fmt
fmt: ## Format the Rust and Go sources
	$(CARGO) fmt --all
	cd tests/apiserver && gofmt -w .

# --- test control plane (tests/apiserver) -------------------------------------------------------

.PHONY: testenv
testenv: $(TESTENV_BIN) ## Build the test control plane (kube-apiserver + etcd), incrementally

$(TESTENV_BIN): tests/apiserver/go.mod tests/apiserver/go.sum $(wildcard tests/apiserver/*.go)
	@mkdir -p $(TESTENV_DIR)
	cd tests/apiserver && go build -trimpath -ldflags '$(GO_LDFLAGS)' -o $(CURDIR)/$(TESTENV_BIN) .

.PHONY: testenv-up
testenv-up: testenv ## Start the test control plane in the background; kubeconfig in target/testenv/kubeconfig
	@scripts/testenv-up.sh $(TESTENV_BIN) $(TESTENV_DIR)

.PHONY: testenv-down
testenv-down: ## Stop the test control plane started by testenv-up
	@scripts/testenv-down.sh $(TESTENV_DIR)

# --- tools the tests use (installed into target/tools, never by hand) ----------------------------

.PHONY: tools
tools: $(TOOLS_DIR)/bin/kubectl $(TOOLS_DIR)/bin/helm ## Install kubectl and helm into target/tools

$(TOOLS_DIR)/bin/kubectl $(TOOLS_DIR)/bin/helm:
	scripts/install-tools.sh $(TOOLS_DIR)

.PHONY: clean
clean: ## Remove build outputs
	$(CARGO) clean

# --- install: generated manifests, Helm chart, demo ----------------------------------------------

HELM         := $(TOOLS_DIR)/bin/helm
CRD_DIRS     := manifests/crds charts/healthscope/files/crds
INSTALL_NS   := healthscope-system

.PHONY: manifests
manifests: tools ## Regenerate the CRDs (from the Rust types) and manifests/install.yaml (from the chart)
	@set -euo pipefail; crds=$$(mktemp); trap 'rm -f "$$crds"' EXIT; \
	$(CARGO) run -q -- crd >"$$crds"; \
	for dir in $(CRD_DIRS); do \
	  mkdir -p $$dir; rm -f $$dir/*.yaml; \
	  awk -v dir=$$dir 'function flush() { if (name != "") { printf "%s", doc > (dir "/" name ".yaml"); close(dir "/" name ".yaml") } name = ""; doc = "" } \
	    /^---$$/ { flush() } { doc = doc $$0 "\n" } \
	    /^metadata:$$/ { meta = 1; next } meta && /^  name: / { name = $$2; meta = 0 } \
	    END { flush() }' "$$crds"; \
	done; \
	$(HELM) template healthscope charts/healthscope --namespace $(INSTALL_NS) \
	  -f manifests/install-values.yaml >manifests/install.yaml; \
	echo "wrote $(CRD_DIRS) and manifests/install.yaml"

.PHONY: helm-lint
helm-lint: tools ## Lint and render the Helm chart
	$(HELM) lint --strict charts/healthscope
	$(HELM) template healthscope charts/healthscope --namespace $(INSTALL_NS) >/dev/null

CERTS_DIR    ?= certs
CERTS_ARGS   ?=

.PHONY: certs
certs: build ## CA and serving certificate for the webhook Service into certs/ (an existing CA is reused)
	target/debug/healthscope certs --service healthscope --namespace $(INSTALL_NS) --out-dir $(CERTS_DIR) $(CERTS_ARGS)
	@echo "install with: helm install healthscope ./charts/healthscope -n $(INSTALL_NS) --create-namespace \\"
	@echo "  --set-file certificate.caBundle=$(CERTS_DIR)/ca.crt --set-file certificate.tlsCrt=$(CERTS_DIR)/tls.crt --set-file certificate.tlsKey=$(CERTS_DIR)/tls.key"

.PHONY: demo
demo: build testenv tools ## Run healthscope end to end on a local control plane, then clean up (needs root)
	scripts/demo.sh
