# rkdeploy — the two commands a newcomer types: `make demo` and `make test`.
SHELL := /bin/bash
VENV  := .venv
RK    := $(VENV)/bin/rkdeploy
TARGET ?= rk3576
RECIPE ?= configs/models/smollm2-135m.yaml
BOARDS ?= all
# make demo's virtual-board part: auto (when root on Linux), 1 (always), 0 (never)
VBOARD ?= auto
VBOARD_RECIPE ?= configs/models/vrk3588-demo.yaml
VBOARD_BENCH ?= --n-prompt 8 --n-gen 4 --reps 2 --warmup 0

.PHONY: board-up board-down board-bench demo-board setup setup-system setup-rkllm llamacpp llamacpp-aarch64 models demo check export quality push bench bench-remote report readme-numbers test test-fast lint clean

setup:            ## .venv (torch 2.13.0 CPU first, then rkdeploy[dev]) + the rknn-toolkit2 venv; idempotent
	@scripts/setup.sh

setup-system:     ## Debian packages the deploy tests need (OpenSSH server, rsync, cmake + ninja for llama.cpp); only when missing
	@command -v /usr/sbin/sshd >/dev/null && command -v rsync >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client rsync >/dev/null; }
	@command -v cmake >/dev/null && command -v ninja >/dev/null && command -v g++ >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake ninja-build g++ >/dev/null; }
	@# the virtual board (make board-up): qemu-user + binfmt, mmdebstrap, the aarch64 cross compilers (C++: llama.cpp for boards)
	@command -v qemu-aarch64-static >/dev/null && command -v update-binfmts >/dev/null && command -v mmdebstrap >/dev/null && \
	  command -v aarch64-linux-gnu-gcc >/dev/null && command -v aarch64-linux-gnu-g++ >/dev/null && \
	  test -e /usr/aarch64-linux-gnu/include/stdio.h || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support \
	    mmdebstrap gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null; }
	@# headless Chromium renders the HTML report in its test (tests/host/results/test_report_html.py)
	@command -v chromium >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

setup-rkllm:      ## make setup-rkllm WHEEL=path/to/rkllm_toolkit-<ver>-cp3X-...whl
	@test -n "$(WHEEL)" || { echo "usage: make setup-rkllm WHEEL=path/to/rkllm_toolkit-<ver>-cp3X-...whl"; exit 2; }
	@scripts/setup_rkllm.sh "$(WHEEL)"

llamacpp: setup setup-system   ## llama.cpp's tools (static, CPU, -march=native minus AMX) + rk-llama-run, cached per host ISA under ~/.cache/rkdeploy/llamacpp (~20 min once on 2 cores); make export/demo need it for the GGUF schemes
	@$(VENV)/bin/python -m host.build.llamacpp_tools --host

llamacpp-aarch64: setup setup-system   ## rk-llama-run for aarch64 boards: llama.cpp cross-compiled (libllama only, armv8.2-a+dotprod+fp16, static), cached; a push of a GGUF carries it once built (it never starts this build)
	@$(VENV)/bin/python -m host.build.llamacpp_tools --aarch64

models: setup     ## materialise the built-in models into the cache
	@$(RK) models fetch

check: models     ## fail-fast checks of the recipe for TARGET
	@$(RK) check --recipe $(RECIPE) --target $(TARGET)

export: models llamacpp   ## build every artifact of RECIPE for TARGET (+ quality table); builds llama.cpp first when missing (GGUF)
	@$(RK) export --recipe $(RECIPE) --target $(TARGET)

quality: models
	@$(RK) quality --recipe $(RECIPE) --target $(TARGET)

push: setup       ## push artifacts of TARGET to BOARDS (configs/boards.yaml)
	@$(RK) push --boards $(BOARDS) --recipe $(RECIPE) --target $(TARGET)

bench: setup      ## local benchmark of TARGET's artifacts that run here
	@$(RK) bench --board local --recipe $(RECIPE) --target $(TARGET)

bench-remote: setup
	@$(RK) bench --boards $(BOARDS) --recipe $(RECIPE) --target $(TARGET)

report: setup
	@$(RK) report --format md

demo: setup models llamacpp   ## set-up (+ llama.cpp once, ~20 min) → export for rk3576 → local bench → the virtual RK3588 (board-bench; first run builds its rootfs, ~15-30 min) → report (+ results/report.html)
	@$(RK) check --recipe $(RECIPE) --target $(TARGET)
	@$(RK) export --recipe $(RECIPE) --target $(TARGET)
	@$(RK) bench --board local --recipe $(RECIPE) --target $(TARGET)
	@if [ "$(VBOARD)" = 1 ] || { [ "$(VBOARD)" = auto ] && [ "$$(id -u)" = 0 ] && [ "$$(uname -s)" = Linux ]; }; then \
	  $(MAKE) --no-print-directory board-bench; \
	else echo "demo: virtual board skipped (VBOARD=$(VBOARD); it needs root on Linux): no vrk3588 rows"; fi
	@$(RK) report --format md
	@$(RK) report --format html --out results/report.html && echo "demo: results/report.html (charts, one self-contained page)"

readme-numbers: setup   ## rewrite the README's measured tables from the results store (after `make demo`)
	@$(VENV)/bin/python -m host.readme_numbers README.md

board-up: setup setup-system   ## the virtual RK3588 vrk3588 (arm64 Debian under qemu, own sshd): build once (~15 min), start, trust, provision
	@$(VENV)/bin/python -m host.vboard up
	@$(RK) boards trust vrk3588
	@$(RK) boards provision vrk3588

board-down:       ## stop the virtual board (by PID) and unmount it; its state stays cached
	@$(VENV)/bin/python -m host.vboard down

board-bench: board-up models   ## one artifact per board backend for rk3588 (VBOARD_RECIPE), benched on vrk3588 with tiny settings (emulated)
	@# .rkllm: rkllm-toolkit when set up, else its labelled test double; .rknn: the real rknn-toolkit2
	@venvs="$$($(VENV)/bin/python -m host.vboard toolkits)" && \
	  RKDEPLOY_VENVS="$$venvs" $(RK) export --recipe $(VBOARD_RECIPE) --target rk3588 --require rkllm,rknn --no-quality
	@$(VENV)/bin/python -m host.vboard rknn-specs
	@RKDEPLOY_STALL_TIMEOUT=600 $(RK) bench --boards vrk3588 --recipe $(VBOARD_RECIPE) --target rk3588 $(VBOARD_BENCH)

demo-board: board-bench   ## only the virtual board's part of make demo, then the report
	@$(RK) report --format md

test: setup setup-system   ## the whole suite on real parts (CI runs this); a test that would skip fails
	@RKDEPLOY_REQUIRE_REAL=1 $(VENV)/bin/python -m pytest -q

test-fast: setup   ## the fast tier (< 2 min): fakes only (no export, sshd, model or board); tests marked real or slow run in make test
	@RKDEPLOY_FAST=1 $(VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not real and not slow"

lint: setup
	@$(VENV)/bin/ruff check host board tests bench
	@$(VENV)/bin/vermin -q --no-tips --violations --eval-annotations -t=3.8- board

clean:
	rm -rf artifacts results .pytest_cache
