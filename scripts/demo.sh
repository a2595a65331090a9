#!/usr/bin/env bash
# The main job on any CPU, from a fresh clone: installs what is missing (Debian 12, as root or with sudo), builds
# the gsm8k_distill app for this CPU, and runs its demo — a tiny Qwen3 teacher's step-by-step traces distilled into
# a tiny Gemma3 student (NF4 + LoRA), accuracy on held-out problems before and after. Arguments go to the demo,
# e.g. `bash scripts/demo.sh --seeds 1 2 3`. No downloads besides the system packages.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
cmake --preset demo >/dev/null
cmake --build --preset demo
exec ./build/demo/apps/gsm8k_distill/gsm8k_distill demo "$@"
