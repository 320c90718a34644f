# The two commands a user needs: `make demo` and `make test`. Everything they need is installed here.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install install-dev browser test demo clean

# What `make demo` needs: the package and its runtime dependencies.
install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $(STAMP)

# What `make test` needs on top: the dev extras (pytest, hypothesis, transformers, gradio, playwright) and,
# test-only, taming-transformers' own modules, which tests/test_convert.py checks `vqgen import taming`
# against. --no-deps: its declared dependencies would pull Lightning and torchvision, and the modules the
# tests use need only torch, numpy and einops.
TAMING := taming-transformers-rom1504==0.0.6

install-dev: $(DEV_STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps '$(TAMING)'
	touch $(DEV_STAMP)

# The web page's end-to-end test (tests/test_serve.py) drives Debian's chromium, headless, through
# playwright (whose own browser downloads are never used). Installed here when missing and we are root
# (as in CI); otherwise a message says how. VQGEN_REQUIRE_BROWSER=1 makes that test fail, not skip,
# without a browser, so `make test` never passes with the page untested.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; \
	  else \
	    echo "make test: the web page test needs Debian's chromium: run 'sudo apt-get install chromium'" \
	         "(or make test as root); without it that test fails" >&2; \
	  fi; }

test: install-dev browser
	VQGEN_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q tests

# The main job: text to image on the procedural `shapes` dataset, from nothing to judged pictures.
# Trains the tokenizer, the text-to-image model, the CLIP reranker and the judge (each resumes or is
# found finished when run again), draws the best 4 of 16 samples for a few captions (the red triangle
# is a colour-shape pair never seen in training) and judges samples of 200 test captions.
DEMO_DIR ?= runs/demo
# Extra training flags for all four models, e.g. `make demo DEMO_FLAGS="--max-steps 50"` for a quick look.
DEMO_FLAGS ?=
DEMO_CAPTIONS ?= "a red circle in the top left" "a large blue square in the center" \
	"a small yellow triangle at the bottom" "a red triangle" "a green circle above a white cross"
demo: install
	$(BIN)/vqgen train tokenizer --config shapes --data shapes --out $(DEMO_DIR)/tokenizer $(DEMO_FLAGS)
	$(BIN)/vqgen encode --tokenizer $(DEMO_DIR)/tokenizer --data shapes --out $(DEMO_DIR)/tokens
	$(BIN)/vqgen train text2img --config shapes --tokens $(DEMO_DIR)/tokens --out $(DEMO_DIR)/text2img $(DEMO_FLAGS)
	$(BIN)/vqgen train clip --config shapes --data shapes --out $(DEMO_DIR)/clip $(DEMO_FLAGS)
	$(BIN)/vqgen train shapes-judge --config shapes --out $(DEMO_DIR)/judge $(DEMO_FLAGS)
	$(BIN)/vqgen generate $(DEMO_CAPTIONS) --model $(DEMO_DIR)/text2img --clip $(DEMO_DIR)/clip \
		--n 16 --keep 4 --out $(DEMO_DIR)/samples.png
	$(BIN)/vqgen eval text2img $(DEMO_DIR)/text2img --clip $(DEMO_DIR)/clip --judge $(DEMO_DIR)/judge \
		--n-captions 200 --report $(DEMO_DIR)/report.json
	@echo "demo: wrote $(DEMO_DIR)/samples.png and $(DEMO_DIR)/report.json; models in $(DEMO_DIR)/{tokenizer,text2img,clip,judge}"

clean:
	rm -rf $(VENV) runs
