# The two commands of the README: `make demo` (the main job on the data shipped in data/)
# and `make test` (build and run the test suite). Both install missing Debian packages when
# run as root, and otherwise print the exact apt-get line and stop.
SHELL := /bin/bash
BUILD ?= build
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=
DEB_PACKAGES := cmake make g++ libopenblas-openmp-dev liblapacke-dev zlib1g-dev libpng-dev \
                nlohmann-json3-dev doctest-dev libboost-context-dev

.PHONY: all deps build test test-all demo bench bench-tables table2 table2-exact table3 table3-cifar figure2 figure2-cifar linreg clean

all: build

deps:
	@command -v dpkg-query >/dev/null || { echo "deps: not a Debian system; make sure these are installed: $(DEB_PACKAGES)"; exit 0; }; \
	missing=""; \
	for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "deps: installing$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "deps: missing Debian packages. Install them with:"; \
	    echo "  sudo apt-get install -y$$missing"; \
	    exit 1; \
	  fi; \
	fi

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)

# The fast default suite; tests labelled "long" run with `make test-all`.
test: build
	@cd $(BUILD) && ctest --output-on-failure -j$(JOBS) -LE long

test-all: build
	@cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

# The paper's MNIST MLP (784-128-64-10, dropout 0.1, SGD 0.01/0.9, batch 64, 50 epochs) on
# 5000 training images, accuracy on 1000 held-out test images.
demo: build
	./$(BUILD)/iif train --data mnist --data-dir data/mnist --n-train 5000 --n-test 1000 \
	  --model mlp --epochs 50 --batch 64 --optimizer sgd --lr 0.01 --momentum 0.9 --seed 0 \
	  --out runs/mlp-mnist.safetensors

bench: build
	@mkdir -p runs
	./$(BUILD)/bench_engine | tee runs/bench_engine.jsonl
	./$(BUILD)/bench_featurizer | tee runs/bench_featurizer.jsonl
	./$(BUILD)/bench_subset_training | tee runs/bench_subset_training.jsonl
	./$(BUILD)/bench_resnet9 | tee runs/bench_resnet9.jsonl

# Wall time of each table at its default scale, cold and from the caches (tens of minutes).
bench-tables: build
	@mkdir -p runs
	./$(BUILD)/bench_tables --bin $(BUILD) | tee runs/bench_tables.jsonl

# The paper's tables and figures (README: "Reproducing the paper"; times measured here).
table2: build
	./$(BUILD)/table2
table2-exact: build
	./$(BUILD)/table2 --compare-exact 100
table3: build
	./$(BUILD)/table3

# Table 3's CIFAR-10 row (ResNet-9) on the shipped records; `build/table3 --data cifar10
# --data-dir DIR` on the official files.
table3-cifar: build
	./$(BUILD)/table3 --data cifar10
figure2: build
	./$(BUILD)/figure2

# The same for CIFAR-10 (ResNet-9, colour thumbnails with class names) -> runs/figure2-cifar10.png
figure2-cifar: build
	./$(BUILD)/figure2 --data cifar10
linreg: build
	./$(BUILD)/linreg_tables

clean:
	rm -rf $(BUILD)
