#!/usr/bin/env bash
# The KL table of README.md ("How good is it"): RealNVP, MAF and NSF trained for 1000 steps
# on 20000 points of each target, KL(target || model) on 20000 fresh samples. Two halves run
# in parallel (one CPU core each); each writes bench.json, bench.png and prints its table.
set -euo pipefail
cd "$(dirname "$0")/.."
common=(--models RealNVP MAF NSF --steps 1000 --threads 1)
torchnf bench "${common[@]}" --targets moons ring checkerboard spirals --out benchmarks/kl/toy &
torchnf bench "${common[@]}" --targets banana funnel student8 gaussian16 --out benchmarks/kl/densities &
wait
# The other models (second table of README.md) on the 2-D targets.
torchnf bench --models NICE IAF PlanarFlow RadialFlow SylvesterNet GeneralizedSylvesterNet \
  --steps 1000 --threads 1 --targets moons ring banana funnel --out benchmarks/kl/others
# Residual flows (i-ResNet / Residual Flows, models/iresnet.py) on the 2-D targets.
torchnf bench --models ResidualFlow --steps 1000 --threads 1 --targets moons ring banana funnel --out benchmarks/kl/residual
# Neural autoregressive flows (NAF, UMNN) and Bernstein-polynomial flows on the 2-D targets.
torchnf bench --models NAF UMNN BernsteinFlow --steps 1000 --threads 1 \
  --targets moons ring banana funnel --out benchmarks/kl/neural
# Circular splines (CircularNSF, models/circular.py) against NSF on the targets with angles.
torchnf bench --models CircularNSF NSF --steps 1000 --threads 1 --targets torus cylinder \
  --out benchmarks/kl/circular
# Continuous normalizing flows (models/continuous.py) trained by flow matching: a step is one
# field evaluation, so more steps on larger batches; benchmarks/cnf.py compares it with the
# same CNF trained by likelihood through the ODE solver (FFJORD).
torchnf bench --models CNF --objective flow_matching --steps 5000 --batch-size 1024 --lr 5e-3 \
  --hidden-sizes 64 64 64 --threads 1 --targets moons ring banana funnel --out benchmarks/kl/cnf
