#!/usr/bin/env bash
# Assembles every device kernel's PTX with NVIDIA's ptxas for sm_90 (H100 / H200), without a GPU: PTX that the
# driver's JIT would reject at model load (inline assembly included) fails here, and each kernel's registers, stack
# and spills are printed.
#
# ptxas comes from Debian's nvidia-cuda-toolkit package (non-free, CUDA 11.8), downloaded and unpacked into
# .cache/cuda-toolkit, not installed; the apt lists it needs go to .cache/apt, the system's apt configuration is left
# alone. ptxas 11.8 reads PTX ISA up to 7.8 and ILGPU 1.5.3 writes ".version 8.0" with nothing newer than 7.8 in it,
# so the version line is lowered for the check.
#
#   bash scripts/ptxas-check.sh            # every kernel
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="$root/.cache"
ptxas="$cache/cuda-toolkit/usr/bin/ptxas"
if [ ! -x "$ptxas" ]; then
  mkdir -p "$cache/apt/lists/partial" "$cache/apt/archives/partial" "$cache/cuda-toolkit"
  . /etc/os-release
  echo "deb http://deb.debian.org/debian ${VERSION_CODENAME:-bookworm} non-free" > "$cache/apt/sources.list"
  opts=(-o "Dir::Etc::SourceList=$cache/apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$cache/apt/lists" -o "Dir::Cache::Archives=$cache/apt/archives" -o "APT::Sandbox::User=root")
  apt-get "${opts[@]}" update -qq
  (cd "$cache/apt/archives" && apt-get "${opts[@]}" download -qq nvidia-cuda-toolkit)
  dpkg-deb -x "$cache"/apt/archives/nvidia-cuda-toolkit_*.deb "$cache/cuda-toolkit"
fi
"$ptxas" --version | tail -1

ptx="$cache/ptx"
rm -rf "$ptx" && mkdir -p "$ptx"
AUTOPRUNE_PTX_DIR="$ptx" dotnet test "$root/tests/AutoPrune.Runtime.Tests" -c Release \
  --filter "FullyQualifiedName~PtxCompileTests.CompilesToPtxForSm90" --nologo -v quiet | tail -2

failed=0; n=0
for f in "$ptx"/*.ptx; do
  n=$((n + 1))
  sed -i 's/^\.version 8\.0$/.version 7.8/' "$f"
  if out=$("$ptxas" -arch=sm_90 -v "$f" -o /dev/null 2>&1); then
    echo "$out" | awk -v k="$(basename "$f" .ptx)" '/Used/ {regs=$0} /stack frame/ {stack=$0} END {sub(/.*Used /, "", regs); sub(/^ */, "", stack); printf "ok   %-62s %s; %s\n", k, regs, stack}'
  else
    echo "FAIL $(basename "$f" .ptx)"; echo "$out" | head -5; failed=$((failed + 1))
  fi
done
echo "$n kernels, $failed failed to assemble for sm_90"
[ "$n" -gt 0 ] && [ "$failed" -eq 0 ]
