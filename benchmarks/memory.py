"""Peak memory of a population against one model.

    python -m benchmarks.memory [--steps 20]

Each case runs in a fresh process on synthetic data of Fashion-MNIST's shape (60000
training images, float32, held once), trains ``--steps`` minibatches of 128 with
``fit_population`` (eager; one model is a population of one) and an evaluation pass, and reports the
process's peak resident memory (``ru_maxrss``) and the part above the data alone.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASES = {"mlp x1": ("mlp", 1), "mlp x8": ("mlp", 8), "cnn x1": ("cnn", 1), "cnn x4": ("cnn", 4)}

CHILD = """
import json, resource, sys, torch
from fn_trainer import Member, NetworkConfiguration, build_network, fit_population
kind, K, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
g = torch.Generator().manual_seed(0)
X = torch.empty(60000, 1, 28, 28).uniform_(0, 255, generator=g)  # no temporary: the peak so far is the data
y = torch.randint(0, 10, (60000,), generator=g)
valid = (X[:2000].clone(), y[:2000].clone())
data_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
config = NetworkConfiguration() if kind == "mlp" else NetworkConfiguration(n_channels=(16, 32, 45), kernel_sizes=(3, 3, 3))
net = build_network(kind, config)
n = steps * 128
fit_population(net, [Member(seed, 1e-3) for seed in range(K)], (X, y), valid, epochs=1, batch_size=128,
               progress=False) if n >= 60000 else fit_population(
    net, [Member(seed, 1e-3) for seed in range(K)], (X[:n], y[:n]), valid, epochs=1, batch_size=128, progress=False)
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "data_mb": data_kb / 1024}))
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="training steps per case (default: %(default)s)")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    results = {}
    for name, (kind, K) in CASES.items():
        out = subprocess.run([sys.executable, "-c", CHILD, kind, str(K), str(args.steps)], capture_output=True,
                             text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[name]
        print(f"{name:8} peak {r['peak_mb']:7.0f} MB, above the data {r['peak_mb'] - r['data_mb']:6.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
