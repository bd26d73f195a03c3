# mp — set-up, demo and tests. `make demo` and `make test` work on a fresh machine.
PY      ?= python3.11
VENV    ?= .venv
BIN      = $(VENV)/bin
STAMP    = $(VENV)/.installed
TORCH    = torch==2.13.0

.PHONY: venv demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first (the pinned CPU build), then the package; a range admitting 2.13.0
# installs nothing more.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $(STAMP)

venv: $(STAMP)

# Adapt the shipped meta-prior to the sample scan (measurements only), reconstruct
# it, reconstruct it with every other method too (zero-filled, CG-SENSE, CS, the
# prior unadapted), score them all against the reference, and list what was written.
DEMO_METHODS = zero-filled sense cs meta
demo: $(STAMP)
	rm -rf out/demo
	$(BIN)/mp adapt --kspace sample_data/brain_fastmri.h5 --recon out/demo/adapted \
		--format h5 --format nifti --format dicom --plot out/demo/adapt_curve.png
	for m in $(DEMO_METHODS); do \
		$(BIN)/mp reconstruct sample_data/brain_fastmri.h5 --out out/demo/$$m --method $$m --format h5 || exit $$?; \
	done
	$(BIN)/mp eval $(DEMO_METHODS:%=out/demo/%/brain_fastmri.h5) out/demo/adapted/brain_fastmri.h5 \
		--ref sample_data/brain_fastmri.h5 --figure out/demo/report.png
# the real 8-coil brain (2-D Poisson, no reference): adapt, then CS beside it
	$(BIN)/mp adapt --kspace sample_data/brain_real_poisson.h5 --recon out/demo/real-adapted \
		--format h5 --format nifti --plot out/demo/real_adapt_curve.png
	$(BIN)/mp reconstruct sample_data/brain_real_poisson.h5 --out out/demo/real-cs --method cs --format h5 --format nifti
	@for f in out/demo/report.png out/demo/adapt_curve.png out/demo/adapted/adapted.safetensors \
		out/demo/adapted/brain_fastmri.h5 out/demo/adapted/brain_fastmri.nii.gz \
		out/demo/adapted/brain_fastmri_dicom/IM0001.dcm $(DEMO_METHODS:%=out/demo/%/brain_fastmri.h5); do \
		test -s $$f || { echo "make demo: missing $$f"; exit 1; }; \
	done
	@echo
	@echo "make demo wrote:"
	@echo "  out/demo/report.png                      reference, every method, error maps, PSNR/SSIM"
	@echo "  out/demo/adapt_curve.png                 the adaptation's self-validation and training losses"
	@echo "  out/demo/adapted/adapted.safetensors     the adapted network"
	@echo "  out/demo/adapted/brain_fastmri.h5        its reconstruction, also as NIfTI (.nii.gz)"
	@echo "  out/demo/adapted/brain_fastmri_dicom/    and as a DICOM series (opens windowed in a viewer)"
	@echo "  out/demo/{zero-filled,sense,cs,meta}/brain_fastmri.h5   the other methods"
	@echo "  out/demo/real-adapted/, out/demo/real-cs/  the real 8-coil brain (sample_data/NOTICE): adapted, CS"

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/hadolint Dockerfile
	$(BIN)/ruff check mpcli tests bench

# Benchmarks print tables (see README); they are not tests. ~1.5 h on 2 CPU cores.
bench: $(STAMP)
	$(BIN)/python bench/classical.py
	$(BIN)/python bench/cs_shifts.py
	$(BIN)/python bench/cs_solver.py
	$(BIN)/python bench/coil_maps.py
	$(BIN)/python bench/coil_acs.py
	$(BIN)/python bench/coil_compression.py --seeds 0,1,2,3
	$(BIN)/python bench/crop_choice.py --seeds 0,1,2,3
	$(BIN)/python bench/quality.py
	$(BIN)/python bench/meta_vs_scratch.py
	$(BIN)/python bench/adapt_defaults.py
	$(BIN)/python bench/adapt_budget.py
	$(BIN)/python bench/adapt_what.py
	$(BIN)/python bench/ceiling.py
	$(BIN)/python bench/hybrid.py
	$(BIN)/python bench/refine_budget.py
	$(BIN)/python bench/heldout_choice.py
	$(BIN)/python bench/heldout_guard.py --seeds 0,1,2,3,4,5,6,7
	$(BIN)/python bench/heldout_guard.py --families acceleration_8 --seeds 8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23
	-$(BIN)/python bench/real_data.py  # needs ../shared/data/real (research licence, not shipped)
	$(BIN)/python bench/prior_checkpoints.py train/prior_ckpt.safetensors
	$(BIN)/python bench/prior_checkpoints.py train/prior_ckpt.safetensors --noise 0.15
	$(BIN)/python bench/mu_calibration.py train/prior_ckpt.safetensors
	$(BIN)/python bench/noise_level.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/step_cost.py
	$(BIN)/python bench/site_prior.py
	$(BIN)/python bench/speed.py --repeats 1

clean:
	rm -rf $(VENV) out
