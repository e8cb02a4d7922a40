# The two entry points (README's first lines): `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SAMPLE := sample_models/lenet300.onnx
OUT := build

.PHONY: demo test install install-test samples bench fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'

# The whole recipe with retraining on the sample MLP (a few seconds), then its size and accuracy.
demo: install
	@mkdir -p $(OUT)
	$(BIN)/deepcompress compress $(SAMPLE) -o $(OUT)/lenet300.dcz --train sample_models/digits_train.npz \
		--val sample_models/digits_test.npz --epochs 10 --lr 0.1 --report
	$(BIN)/deepcompress info $(OUT)/lenet300.dcz
	$(BIN)/deepcompress export $(OUT)/lenet300.dcz -o $(OUT)/lenet300.compressed.onnx
	$(BIN)/deepcompress bench $(SAMPLE) $(OUT)/lenet300.dcz --data sample_models/digits_test.npz

test: install-test
	$(BIN)/python -m pytest -q

# 100,000 mutated .dcz files through the reader (about 5 minutes on 2 cores).
fuzz: install
	$(BIN)/python benchmarks/fuzz_reader.py --cases 100000

samples: install-test
	$(BIN)/python sample_models/make_samples.py

clean:
	rm -rf $(OUT) .pytest_cache
