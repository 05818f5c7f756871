#!/usr/bin/env bash
# llamacpp-check.sh - does llama.cpp load the GGUF files AutoPrune writes, and agree with AutoPrune on them?
#
#   scripts/llamacpp-check.sh [TYPES]        TYPES: comma-separated, default f16,q8_0,q4_k_m
#
# 1. builds bench/AutoPrune.Benchmarks and runs `gguf-export`: the demo model (samples/models/shapes-llava-tiny) written
#    as text GGUF(s) + mmproj, then run through AutoPrune's own GGUF loader and CPU engine on the 8 text prompts of
#    tests/data/gguf-tiny/references.json (ours.json);
# 2. installs node-llama-cpp 3.21.1 (the version the gguf-tiny fixture was made with; prebuilt llama.cpp CPU binaries)
#    into a temporary folder with npm;
# 3. node scripts/llamacpp-check.mjs: llama.cpp loads each file and its token ids, next-token log-probabilities and
#    greedy tokens are compared with ours (tolerances from the fixture README). Exit status 0 when everything agrees.
# Needs dotnet, node >= 20 and npm with access to the npm registry (~730 MB of packages). Not part of the test suite.
# Set KEEP=1 to keep the temporary folder.
set -euo pipefail
TYPES="${1:-f16,q8_0,q4_k_m}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d -t autoprune-llamacpp-XXXXXX)"
cleanup() { if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; else echo "kept $WORK"; fi; }
trap cleanup EXIT

echo "== building and exporting ($TYPES) into $WORK/gguf"
dotnet build "$ROOT/bench/AutoPrune.Benchmarks" -c Release -v q -nologo >/dev/null
dotnet "$ROOT/bench/AutoPrune.Benchmarks/bin/Release/net10.0/AutoPrune.Benchmarks.dll" gguf-export \
    --model "$ROOT/samples/models/shapes-llava-tiny" --out "$WORK/gguf" --types "$TYPES" \
    --prompts "$ROOT/tests/data/gguf-tiny/references.json"

echo "== installing node-llama-cpp 3.21.1 into $WORK/nlc"
mkdir -p "$WORK/nlc"
echo '{"name":"autoprune-llamacpp-check","private":true,"type":"module"}' > "$WORK/nlc/package.json"
# The prebuilt binaries come with the npm packages; skip the postinstall step that would fetch llama.cpp's sources.
(cd "$WORK/nlc" && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --no-audit --no-fund --silent node-llama-cpp@3.21.1)
cp "$ROOT/scripts/llamacpp-check.mjs" "$WORK/nlc/"

echo "== llama.cpp on the written files"
(cd "$WORK/nlc" && node llamacpp-check.mjs "$WORK/gguf/ours.json" | tee "$WORK/report.json")
