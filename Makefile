# R3 — make targets. `make test` installs what is missing (apt), builds and runs the whole suite.
SHELL := /bin/bash
# the arm64 cross libc, libgcc and qemu: Tests/cli/test_portability.py builds and runs the C kernels for aarch64
APT_PACKAGES := libopenblas-dev libpq-dev postgresql chromium libc6-dev-arm64-cross libgcc-12-dev-arm64-cross qemu-user-static
PY_PACKAGES := numpy safetensors pytest requests schemathesis openapi-spec-validator standardwebhooks pillow
SWIFT ?= swift
CONFIG ?= release

.PHONY: deps pydeps build run test bench bench-rl demo clean

# Installs the system libraries the build links against, only when missing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# Python clients the tests drive the CLI with (numpy writes .npy routes, safetensors reads outputs).
pydeps:
	@python3 -c "import numpy, safetensors, pytest, requests, schemathesis, openapi_spec_validator, standardwebhooks, PIL" 2>/dev/null || python3 -m pip install -q $(PY_PACKAGES)

build: deps
	$(SWIFT) build -c $(CONFIG)

# Tests run optimised (the engine's gradient checks are slow unoptimised); -enable-testing keeps @testable.
test: deps pydeps
	$(SWIFT) build -c $(CONFIG) -Xswiftc -enable-testing --build-tests
	$(SWIFT) test -c $(CONFIG) -Xswiftc -enable-testing --skip-build
	R3_BIN=$(CURDIR)/.build/$(CONFIG)/r3 python3 -m pytest -q Tests/cli Tests/service

# The service on the embedded default: a private PostgreSQL under $$R3_DATA_DIR (./.r3) when
# DATABASE_URL is unset. Create a key first: .build/release/r3 keys create --project NAME
run: build
	.build/$(CONFIG)/r3 serve

bench: build
	.build/$(CONFIG)/r3 bench engine

# The R3 result end to end through the API: plots and report.json in ./r3-demo (README's table and plot).
demo: build
	.build/$(CONFIG)/r3 demo --out r3-demo --readme README.md

# SFT a small MoE, then RL from that checkpoint under replay none / R2 / R3 with the same seeds.
bench-rl: build
	.build/$(CONFIG)/r3 bench rl

clean:
	rm -rf .build
