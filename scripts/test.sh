#!/usr/bin/env bash
# The whole test suite: host packages, type check, unit tests, the seeded
# simulator, and the integration tests with real processes and real clients.
# Nothing is skipped silently: a missing tool is installed or the run fails.
set -uo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-test-host.sh || exit 1
if [[ ! -d node_modules ]]; then
  echo "node_modules is missing: run npm install first" >&2
  exit 1
fi
if [[ -f binding.gyp && ( ! -f build/Release/xdevice.node || ! -x build/Release/xdevice-nbd-attach ) ]]; then
  echo "the native addon is not built: run npm install (or npm run build)" >&2
  exit 1
fi

echo "== build (dist/ for the binaries the integration tests run)"
node_modules/.bin/tsc -p tsconfig.build.json || { echo "0 passed, 1 failed"; exit 1; }

echo "== type check (tsc --noEmit)"
node_modules/.bin/tsc --noEmit -p . || { echo "0 passed, 1 failed"; exit 1; }

echo "== tests (tap)"
out=$(mktemp /tmp/xdevice-test.XXXXXX.log)
files=("$@")
if (( ${#files[@]} == 0 )); then
  mapfile -t files < <(find test/unit test/sim test/integration -name '*.test.ts' 2>/dev/null | sort)
fi
node_modules/.bin/tap --reporter=tap --jobs="${XDEVICE_TEST_JOBS:-2}" "${files[@]}" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
summary=$(grep -E '^# \{ total: [0-9]+' "$out" | tail -n 1)
total=$(sed -nE 's/.*total: ([0-9]+).*/\1/p' <<<"$summary")
pass=$(sed -nE 's/.*pass: ([0-9]+).*/\1/p' <<<"$summary")
fail=$(sed -nE 's/.*fail: ([0-9]+).*/\1/p' <<<"$summary")
skip=$(sed -nE 's/.*skip: ([0-9]+).*/\1/p' <<<"$summary")
todo=$(sed -nE 's/.*todo: ([0-9]+).*/\1/p' <<<"$summary")
: "${total:=0}" "${pass:=0}" "${fail:=0}" "${skip:=0}" "${todo:=0}"
if (( rc != 0 && fail == 0 )); then fail=1; fi
if (( total == 0 )); then echo "no tests ran" >&2; rc=1; fi
if (( skip + todo > 0 )); then echo "skipped or todo tests are not allowed: skip=$skip todo=$todo" >&2; rc=1; fi
if (( rc != 0 )); then
  # CI shows the end of the output: repeat each failed assertion there, with
  # its diagnostics (the YAML block tap prints under it) and the file it is in.
  echo "== failures"
  awk '
    /^# Subtest: / { file = substr($0, 12) }
    /^ *not ok / { print "in " file ":"; print; yaml = 1; n = 0; next }
    yaml && /^ *---$/ { inblock = 1 }
    yaml && inblock { if (n++ < 40) print; if ($0 ~ /^ *\.\.\.$/) { yaml = 0; inblock = 0 } ; next }
    yaml { yaml = 0 }
  ' "$out" | head -n 400
fi
echo "$pass passed, $fail failed"
exit $rc
