# One-command entry points; see README.md.
VENV ?= .venv
PY := $(VENV)/bin/python
# Pillow-SIMD compiles from source; AVX2 where the CPU has it.
SIMD_CC := cc $(shell grep -qm1 avx2 /proc/cpuinfo 2>/dev/null && echo -mavx2)

.PHONY: install test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so nothing pulls a CUDA build from the registry.
	$(PY) -m pip install -q torch==2.13.0
	CC="$(SIMD_CC)" $(PY) -m pip install -q pillow-simd
	$(PY) -m pip install -q -e '.[test,export,remote]'
	# Pillow-SIMD must still be the only PIL (torchvision-like extras would pull Pillow over it).
	! $(PY) -m pip show -q pillow >/dev/null 2>&1 || { echo 'Pillow was pulled in over Pillow-SIMD' >&2; exit 1; }
	$(PY) cli.py info
	touch $@

test: install
	# the stages' layers (.importlinter): no circle, no import that runs back up
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

# The main job on the embedded default data: look-alike set, shards, a short training run.
demo: install
	$(PY) cli.py synth --out data/lookalike --scale 1.0
	$(PY) cli.py preprocess --data-dir data/lookalike --size 64
	$(PY) cli.py verify
	$(PY) cli.py train --model cnn4conv --epochs 3 --amp --out runs/demo
	$(PY) cli.py evaluate runs/demo/best.pt

bench: install
	$(PY) cli.py bench

clean:
	rm -rf shards/*.h5 shards/manifest.json runs data/lookalike
