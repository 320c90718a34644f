# The two commands a user needs: `make demo` and `make test`. Everything they need is installed here.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q tests

# Until the text-to-image demo lands, the demo trains the Fashion-MNIST tokenizer preset,
# evaluates it on the test split and writes a reconstruction grid.
DEMO_RUN ?= runs/demo-tokenizer
# Extra training flags, e.g. `make demo DEMO_FLAGS="--max-steps 50"` for a quick look.
DEMO_FLAGS ?=
DEMO_DATA ?= $(shell [ -d ../shared/data/fashion-mnist ] && echo fashion-mnist:../shared/data/fashion-mnist || echo fashion-mnist)
demo: install
	$(BIN)/vqgen train tokenizer --config fashion-mnist --data $(DEMO_DATA) --out $(DEMO_RUN) $(DEMO_FLAGS)
	$(BIN)/vqgen eval tokenizer $(DEMO_RUN) --data $(DEMO_DATA) --split test --json | tee $(DEMO_RUN)/eval.json
	$(BIN)/vqgen reconstruct $(DEMO_RUN) --data $(DEMO_DATA) --split test --out $(DEMO_RUN)/reconstructions.png
	@echo "demo: wrote $(DEMO_RUN)/model.safetensors, $(DEMO_RUN)/eval.json, $(DEMO_RUN)/reconstructions.png"

clean:
	rm -rf $(VENV) runs
