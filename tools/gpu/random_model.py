"""A random model of the project's base model, as setup/benchmark_train.py builds it: random_model.py SIZE DEVICE OUT.

Run from a baked project's root. SIZE is full (the real dimensions, bf16) or tiny; DEVICE cuda or cpu. Used by
tools/gpu/onnx-cuda.sh for the inference benchmark's merged model.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, "setup")
import benchmark_train  # noqa: E402
import project  # noqa: E402

size, device, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
config = json.loads(project.OLIVE_CONFIG.read_text(encoding="utf-8"))
benchmark_train.ensure_model(out, project.load(), config, size, device)
