# nsinit: see README.md. Every target works from a fresh clone as root.
GO        ?= go
# The version is the nearest git tag (v1.2.0, or v1.2.0-3-gabcdef0 after it),
# else the commit.
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BIN       := bin/nsinit
# ldflags for GOARCH $(1). -s -w: strip. godebugDefault=asyncpreemptoff=1:
# the runtime never sends itself SIGURG, so a SIGURG nsinit receives came
# from outside and is forwarded like any other signal (noPreemptSignals
# tells the code). -E ...rt0: the assembly entry point that reads the
# start signal mask and dispositions (amd64 only). A build without these
# says so in --version and warns when it runs as the init
# (internal/earlyinit/start.go).
EARLY     := github.com/nsinit/nsinit/internal/earlyinit
ldflags    = -s -w -X main.version=$(VERSION) \
             -X runtime.godebugDefault=asyncpreemptoff=1 -X $(EARLY).noPreemptSignals=1 \
             $(if $(filter amd64,$(1)),-E $(EARLY).rt0)
LDFLAGS   := $(call ldflags,$(shell $(GO) env GOARCH))
RELEASE_ARCHS := amd64 arm64
export CGO_ENABLED = 0
export NSINIT_BIN  = $(CURDIR)/$(BIN)

.PHONY: all deps build release test test-loaded unit-test vm-test vm-run demo bench fuzz generate clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/nsinit

# Static binaries (CGO_ENABLED=0) for every RELEASE_ARCHS, linked as
# `make build` links, and their SHA256SUMS, in dist/.
release:
	rm -rf dist
	mkdir -p dist
	$(foreach a,$(RELEASE_ARCHS),GOARCH=$(a) $(GO) build -trimpath -ldflags '$(call ldflags,$(a))' -o dist/nsinit-linux-$(a) ./cmd/nsinit &&) true
	cd dist && sha256sum nsinit-linux-* > SHA256SUMS

# Debian packages and Go modules the tests and the demo need (idempotent).
deps:
	./scripts/install-deps.sh

# The whole suite: unit and privileged tests against the real kernel, then
# the QEMU images.
test: deps
	$(MAKE) unit-test vm-test

# `make test` three times in a row with two CPU-bound processes beside it:
# no test may depend on an idle machine (issue #13). The two processes are
# killed at the end, whether the runs pass, fail or are interrupted.
test-loaded:
	@yes >/dev/null & y1=$$!; yes >/dev/null & y2=$$!; \
	trap 'kill $$y1 $$y2 2>/dev/null; wait $$y1 $$y2 2>/dev/null' EXIT; trap 'exit 130' HUP INT PIPE TERM; \
	for i in 1 2 3; do \
		echo "== make test: run $$i of 3, beside two CPU-bound processes"; \
		$(MAKE) test || exit $$?; \
	done

# -p 1: one test package at a time. Restore places level-0 pids through the
# host's shared pid cursor and fails (cleanly) when another process takes an
# image pid first; test packages forking in parallel would be that process.
unit-test: build
	$(GO) vet ./...
	$(GO) test -p 1 -count=1 -timeout 30m ./...

vm-test: build
	$(GO) test -count=1 -timeout 45m -v ./vm-test/ -run . -vm

demo: deps build
	./demo/demo.sh

# Boot CMD under nsinit in a test VM; exits with CMD's status.
vm-run: build
	$(GO) build -o bin/vmrun ./vm-test/cmd/vmrun && bin/vmrun -- $(CMD)

bench: build
	$(GO) test -run '^$$' -bench . -benchtime 3x -timeout 30m ./...

# -fuzz takes one target per package: the decoder alone, then the whole
# path of show and restore --dry-run (decode, validate, JSON, plan), then the
# state image's validator.
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 60s ./imagefile/
	$(GO) test -run '^$$' -fuzz '^FuzzPlan$$' -fuzztime 60s ./restorer/
	$(GO) test -run '^$$' -fuzz '^FuzzValidate$$' -fuzztime 60s ./state/

# Rebuilds the committed generated code (eBPF objects and bindings, protobuf);
# the output is byte-stable, so `git diff` after it shows nothing.
generate:
	./scripts/install-deps.sh --generate
	$(GO) generate ./...

clean:
	rm -rf bin dist
