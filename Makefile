# healthscope — build, test, demo.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO        ?= cargo
TESTENV_DIR  := target/testenv
TESTENV_BIN  := $(TESTENV_DIR)/kube-testenv
OAM_DIR      := target/oam-runtime
OAM_BIN      := $(OAM_DIR)/oam-kubernetes-runtime
# The OAM runtime release tests/oam-runtime pins (see tests/oam-runtime/go.mod).
OAM_MODULE   := github.com/crossplane/oam-kubernetes-runtime
OAM_VERSION  := $(shell sed -n 's/^\t$(subst /,\/,$(OAM_MODULE)) \(v[^ ]*\).*/\1/p' tests/oam-runtime/go.mod | head -1)
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
test: testenv oam-runtime tools ## Run every test: unit, and integration against a real kube-apiserver and OAM runtime
	KUBE_TESTENV_BIN=$(CURDIR)/$(TESTENV_BIN) KUBE_TESTENV_REQUIRED=1 \
	  OAM_RUNTIME_DIR=$(CURDIR)/$(OAM_DIR) $(CARGO) test --all-targets

.PHONY: lint
lint: ## Check formatting and run clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	cd tests/apiserver && gofmt -l . | (! grep .) && echo "go vet tests/apiserver: about 10 min on a cold vet cache (it compiles Kubernetes once more), seconds warm" && go vet .

.PHONY: fmt
fmt: ## Format the Rust and Go sources
	$(CARGO) fmt --all
	cd tests/apiserver && gofmt -w .

# --- test control plane (tests/apiserver) -------------------------------------------------------

.PHONY: testenv
testenv: $(TESTENV_BIN) ## Build the test control plane (kube-apiserver + etcd), incrementally

$(TESTENV_BIN): tests/apiserver/go.mod tests/apiserver/go.sum $(wildcard tests/apiserver/*.go)
	@mkdir -p $(TESTENV_DIR)
	@echo "go build kube-testenv (kube-apiserver + etcd, Kubernetes $(K8S_VERSION)): 6-10 min on a cold Go cache, seconds warm"
	cd tests/apiserver && go build -trimpath -ldflags '$(GO_LDFLAGS)' -o $(CURDIR)/$(TESTENV_BIN) .

.PHONY: testenv-up
testenv-up: testenv ## Start the test control plane in the background; kubeconfig in target/testenv/kubeconfig
	@scripts/testenv-up.sh $(TESTENV_BIN) $(TESTENV_DIR)

.PHONY: testenv-down
testenv-down: ## Stop the test control plane started by testenv-up
	@scripts/testenv-down.sh $(TESTENV_DIR)

# --- the OAM runtime (tests/oam-runtime) ----------------------------------------------------------

.PHONY: oam-runtime
oam-runtime: $(OAM_DIR)/.built ## Build oam-kubernetes-runtime and unpack its CRDs, chart and examples into target/oam-runtime

$(OAM_DIR)/.built: tests/oam-runtime/go.mod tests/oam-runtime/go.sum
	@mkdir -p $(OAM_DIR)
	@echo "go build $(OAM_MODULE) $(OAM_VERSION) (about 2-4 min on a cold cache, seconds warm)"
	cd tests/oam-runtime && go build -trimpath -o $(CURDIR)/$(OAM_BIN) $(OAM_MODULE)/cmd/oam-kubernetes-runtime
	@set -euo pipefail; src=$$(cd tests/oam-runtime && go list -m -f '{{.Dir}}' $(OAM_MODULE)); \
	rm -rf $(OAM_DIR)/crds $(OAM_DIR)/chart $(OAM_DIR)/examples; \
	cp -r "$$src/charts/oam-kubernetes-runtime/crds" $(OAM_DIR)/crds; \
	cp -r "$$src/charts/oam-kubernetes-runtime" $(OAM_DIR)/chart; \
	cp -r "$$src/examples" $(OAM_DIR)/examples; \
	chmod -R u+w $(OAM_DIR); \
	sed 's/%%VERSION%%/$(OAM_VERSION)/' $(OAM_DIR)/chart/values.yaml.tmpl >$(OAM_DIR)/chart/values.yaml; \
	rm $(OAM_DIR)/chart/values.yaml.tmpl; \
	touch $@

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
CRD_DIRS     := manifests/crds charts/healthscope/crds
# The CRDs healthscope ships (HealthScope, HealthRule); the OAM CRDs (ApplicationConfiguration, Component,
# ContainerizedWorkload) are the OAM runtime's. Any other document `healthscope crd` prints is dropped.
SHIPPED_CRDS := healthscopes.core.oam.dev healthrules.healthscope.oam.dev
INSTALL_NS   := healthscope-system

.PHONY: manifests
manifests: tools ## Regenerate the HealthScope CRD (from the Rust types) and manifests/install.yaml (from the chart)
	@set -euo pipefail; crds=$$(mktemp); trap 'rm -f "$$crds"' EXIT; \
	$(CARGO) run -q -- crd >"$$crds"; \
	for dir in $(CRD_DIRS); do \
	  mkdir -p $$dir; rm -f $$dir/*.yaml; \
	  awk -v dir=$$dir -v keep=" $(SHIPPED_CRDS) " 'function flush() { if (name != "" && index(keep, " " name " ")) { printf "%s", doc > (dir "/" name ".yaml"); close(dir "/" name ".yaml") } name = ""; doc = "" } \
	    /^---$$/ { flush() } { doc = doc $$0 "\n" } \
	    /^metadata:$$/ { meta = 1; next } meta && /^  name: / { name = $$2; meta = 0 } \
	    END { flush() }' "$$crds"; \
	  for crd in $(SHIPPED_CRDS); do \
	    [[ -s $$dir/$$crd.yaml ]] || { echo "healthscope crd printed no $$crd" >&2; exit 1; }; \
	  done; \
	done; \
	$(HELM) template healthscope charts/healthscope --namespace $(INSTALL_NS) --include-crds \
	  --skip-tests -f manifests/install-values.yaml >manifests/install.yaml; \
	echo "wrote $(CRD_DIRS) and manifests/install.yaml"

.PHONY: helm-lint
helm-lint: tools ## Lint and render the Helm chart
	$(HELM) lint --strict charts/healthscope --set certificate.allowMissingCaBundle=true
	$(HELM) template healthscope charts/healthscope --namespace $(INSTALL_NS) \
	  --set certificate.allowMissingCaBundle=true >/dev/null

CERTS_DIR    ?= certs
CERTS_ARGS   ?=
# The Helm release the certificate is for, and its namespace. The chart names the webhook
# Service after the release (<release>-healthscope when the name does not contain healthscope).
RELEASE      ?= healthscope
RELEASE_NS   ?= $(INSTALL_NS)
SERVICE      := $(if $(findstring healthscope,$(RELEASE)),$(RELEASE),$(RELEASE)-healthscope)

.PHONY: certs
certs: build ## CA and serving certificate for Helm release RELEASE (default healthscope) in RELEASE_NS into certs/ (an existing CA is reused; CERTS_ARGS=--force replaces the certificate)
	@target/debug/healthscope certs --service $(SERVICE) --namespace $(RELEASE_NS) --out-dir $(CERTS_DIR) $(CERTS_ARGS) \
	  || { echo "to replace the serving certificate (keeping the CA): make certs CERTS_ARGS=--force RELEASE=$(RELEASE) RELEASE_NS=$(RELEASE_NS)"; exit 1; }
	@if [ -n "$(findstring --force,$(CERTS_ARGS))" ]; then \
	  echo "roll it out with: helm upgrade $(RELEASE) ./charts/healthscope -n $(RELEASE_NS) --reuse-values \\"; \
	  echo "  --set-file certificate.tlsCrt=$(CERTS_DIR)/tls.crt --set-file certificate.tlsKey=$(CERTS_DIR)/tls.key"; \
	else \
	  echo "install with: helm install $(RELEASE) ./charts/healthscope -n $(RELEASE_NS) --create-namespace \\"; \
	  echo "  --set-file certificate.caBundle=$(CERTS_DIR)/ca.crt --set-file certificate.tlsCrt=$(CERTS_DIR)/tls.crt --set-file certificate.tlsKey=$(CERTS_DIR)/tls.key"; \
	fi

.PHONY: demo
demo: build testenv oam-runtime tools ## Run healthscope end to end on a local control plane, then clean up (needs root)
	scripts/demo.sh

# --- benchmarks and fuzzing (bench/, fuzz/, docs/benchmarks.md) ----------------------------------

BENCH_DURATION ?= 10s
FUZZ_SECONDS   ?= 60
CARGO_FUZZ     := $(TOOLS_DIR)/cargo-fuzz/bin/cargo-fuzz

.PHONY: bench
bench: testenv oam-runtime tools ## Run every benchmark (release builds); figures for docs/benchmarks.md in target/bench
	@command -v wrk >/dev/null || { echo "wrk missing: apt-get install wrk" >&2; exit 1; }
	$(CARGO) build --release --features bench --bins
	@mkdir -p target/bench
	set -o pipefail; target/release/bench-rules | tee target/bench/rules.md
	SKIP_BUILD=1 DURATION=$(BENCH_DURATION) bench/webhook.sh
	SKIP_BUILD=1 bench/apiserver.sh
	SKIP_BUILD=1 bench/scale.sh
	SKIP_BUILD=1 RULE=1 bench/scale.sh
	bench/coexist.py --release

.PHONY: bench-webhook
bench-webhook: ## Webhook vs the floor only (wrk, HTTPS keep-alive, 1-200 connections)
	DURATION=$(BENCH_DURATION) bench/webhook.sh

.PHONY: bench-rules
bench-rules: ## Cost of one evaluation by a CEL HealthRule vs the built-in rule (about 15 s, no control plane)
	$(CARGO) build --release --features bench --bin bench-rules
	@mkdir -p target/bench
	set -o pipefail; target/release/bench-rules | tee target/bench/rules.md

$(CARGO_FUZZ):
	$(CARGO) install cargo-fuzz --locked --root $(TOOLS_DIR)/cargo-fuzz

.PHONY: fuzz
fuzz: $(CARGO_FUZZ) ## Build the fuzz targets with coverage and run each for FUZZ_SECONDS (default 60)
	cd fuzz && for target in $$(RUSTC_BOOTSTRAP=1 ../$(CARGO_FUZZ) list); do \
	  mkdir -p ../target/fuzz-corpus/$$target; \
	  RUSTC_BOOTSTRAP=1 ../$(CARGO_FUZZ) run --sanitizer none "$$target" \
	    ../target/fuzz-corpus/$$target seeds/$$target -- \
	    -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 || exit 1; \
	done

.PHONY: fuzz-build
fuzz-build: ## Compile the fuzz targets without instrumentation (cheap; reuses target/)
	$(CARGO) build --manifest-path fuzz/Cargo.toml --target-dir target --bins
