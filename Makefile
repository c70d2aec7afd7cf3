# R3 — make targets. `make test` installs what is missing (apt), builds and runs the whole suite.
SHELL := /bin/bash
APT_PACKAGES := libopenblas-dev
SWIFT ?= swift
CONFIG ?= release

.PHONY: deps build test bench clean

# Installs the system libraries the build links against, only when missing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

build: deps
	$(SWIFT) build -c $(CONFIG)

# Tests run optimised (the engine's gradient checks are slow unoptimised); -enable-testing keeps @testable.
test: deps
	$(SWIFT) build -c $(CONFIG) -Xswiftc -enable-testing --build-tests
	$(SWIFT) test -c $(CONFIG) -Xswiftc -enable-testing --skip-build

bench: build
	.build/$(CONFIG)/r3 bench engine

clean:
	rm -rf .build
