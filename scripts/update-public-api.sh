#!/usr/bin/env bash
# Brings each library package's PublicAPI.Unshipped.txt up to date with its public API: builds every package with the
# public API analyzer's findings as warnings, adds what the build reports as undeclared (RS0016) to Unshipped and drops
# what it reports as declared but gone (RS0017) from both files. Review the diff: it is the package's API change.
#   scripts/update-public-api.sh            all packages
#   scripts/update-public-api.sh Runtime    one (src/AutoPrune.<name>)
set -euo pipefail
cd "$(dirname "$0")/.."
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(Runtime Extensions.AI SemanticKernel MLNet AspNetCore)
for name in "${names[@]}"; do
  dir="src/AutoPrune.$name"
  log=$(mktemp)
  dotnet build "$dir" -c Release --no-incremental -p:TreatWarningsAsErrors=false -p:WarningsAsErrors= >"$log" 2>&1 || { cat "$log"; exit 1; }
  project="$(cd "$dir" && pwd)/AutoPrune.$name.csproj"
  # Only the package's own findings (a referenced package reports its own in the same build).
  added=$(grep -F "[$project]" "$log" | grep -oP "warning RS0016: Symbol '\K.*(?=' is not part of the declared public API)" | sort -u || true)
  removed=$(grep -F "[$project]" "$log" | grep -oP "warning RS0017: Symbol '\K.*(?=' is part of the declared API)" | sort -u || true)
  for file in "$dir/PublicAPI.Shipped.txt" "$dir/PublicAPI.Unshipped.txt"; do
    [ -f "$file" ] || printf '#nullable enable\n' >"$file"
    if [ -n "$removed" ]; then
      grep -vxF -f <(printf '%s\n' "$removed") "$file" >"$file.tmp" || true
      mv "$file.tmp" "$file"
    fi
  done
  if [ -n "$added" ]; then
    { head -n1 "$dir/PublicAPI.Unshipped.txt"; { tail -n +2 "$dir/PublicAPI.Unshipped.txt"; printf '%s\n' "$added"; } | sort -u; } >"$dir/PublicAPI.Unshipped.txt.tmp"
    mv "$dir/PublicAPI.Unshipped.txt.tmp" "$dir/PublicAPI.Unshipped.txt"
  fi
  echo "$name: $(printf '%s' "$added" | grep -c . || true) added, $(printf '%s' "$removed" | grep -c . || true) removed"
  rm -f "$log"
done
