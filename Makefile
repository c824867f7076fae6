# textgen: every target sets up what it needs (a .venv with the package installed) on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEFAULT_CORPUS := data/pydoc_topics.txt
CORPUS ?= $(DEFAULT_CORPUS)
TEXTGEN := $(BIN)/textgen
# The demo: a small model trained for a fixed amount of work (6 epochs), so that it reaches the same loss on
# every CPU: about 3 minutes on 2 AVX2 cores (a Zen 3), 1 minute on a 2-core Zen 4. --size auto (the default)
# sizes the model for 6 epochs of this corpus (1 x 256 units, dropout 0.1, no weight decay) and the cosine
# schedule anneals the learning rate by the last epoch. The sample uses min-p and a cap on repeated characters,
# the two samplers meant for a small character model.
DEMO_OPTIONS ?= --run demo --overwrite --epochs 6
DEMO_SAMPLE_OPTIONS ?= --run demo --temperature 0.5 --min-p 0.05 --max-repeat 20 --length 600 --prime "The " --seed 1

.DEFAULT_GOAL := help
.PHONY: help install data train sample demo test test-slow bench bench-peers bench-heldout bench-sizing bench-quality bench-precision lint readme clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install textgen with its dependencies

# Always the default corpus, never CORPUS (make train CORPUS=mine.txt wrote Python's docs over mine.txt); it is
# generated, not committed, so it is refreshed from the Python that runs it.
data: $(STAMP) ## Build the default corpus data/pydoc_topics.txt from Python's own docs
	$(BIN)/python -m textgen.data --overwrite $(DEFAULT_CORPUS)

train: data ## Train with the default options on CORPUS (default: the built-in corpus)
	$(TEXTGEN) train $(CORPUS)

sample: $(STAMP) ## Print 500 characters from the latest run at temperature 0.5 (with the demo's loop guards)
	$(TEXTGEN) sample --temperature 0.5 --min-p 0.05 --max-repeat 20

demo: data ## The main job: train a small model on the default corpus (6 epochs, 1-3 min), save checkpoints, print a sample
	$(TEXTGEN) train $(CORPUS) $(DEMO_OPTIONS)
	$(TEXTGEN) sample $(DEMO_SAMPLE_OPTIONS)

# The multi-process tests (several workers, kill -9, signals to a real server) are marked slow and run apart, so
# that the default run stays under 10 minutes on 2 cores; CI runs both.
test: $(STAMP) ## Run the tests (7 minutes on 2 Zen 4 cores, 9 on Zen 3; CI runs this, then test-slow)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP) ## Run the slow multi-process tests: workers, kill -9, signals (about 3 minutes)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP) ## Speed benchmarks (sampling, training, corpus, distributed, serving); results go to BENCHMARKS.md
	$(BIN)/python benchmarks/run_all.py

# The PyTorch peers get a virtualenv of their own: torch is never a textgen dependency. 2.13.0 is the CPU
# build where the machine keeps that wheel on disk; elsewhere pip takes PyPI's build (it runs on the CPU too).
PEERS_VENV := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed
TORCH_VERSION ?= 2.13.0

$(PEERS_STAMP):
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet torch==$(TORCH_VERSION) numpy
	touch $(PEERS_STAMP)

bench-peers: $(STAMP) $(PEERS_STAMP) ## Training and sampling side by side with the obvious PyTorch loops (own venv)
	$(BIN)/python benchmarks/bench_peers.py --peer-python $(PEERS_VENV)/bin/python

bench-heldout: $(STAMP) $(PEERS_STAMP) ## Equal-time quality on six kinds of text: --size auto vs fixed vs PyTorch (~45 min)
	$(BIN)/python benchmarks/bench_heldout.py --peer-python $(PEERS_VENV)/bin/python

bench-sizing: $(STAMP) ## Train ladder shapes on tinyshakespeare for 2 minutes each: the runs the sizing rule is fitted from
	$(BIN)/python benchmarks/bench_sizing.py

bench-quality: $(STAMP) ## Train the default model on tinyshakespeare for 20 minutes, report the best validation loss
	$(BIN)/python benchmarks/bench_quality.py

bench-precision: $(STAMP) ## Train 2 epochs on tinyshakespeare in float32 and in bfloat16, compare speed and loss
	$(BIN)/python benchmarks/bench_mixed_precision.py

lint: $(STAMP) ## Check the code with ruff
	$(BIN)/ruff check textgen tests benchmarks tools

readme: $(STAMP) ## Regenerate the README's option reference from the CLI's --help
	$(BIN)/python tools/update_readme.py

clean: ## Remove the virtualenv, caches, the built corpus and all checkpoints
	rm -rf $(VENV) $(PEERS_VENV) .pytest_cache .ruff_cache *.egg-info build dist data/*.txt benchmarks/out
	find checkpoints -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
