#!/usr/bin/env bash
# Schema-driven fuzzing: schemathesis generates requests from the service's own OpenAPI
# document (GET /openapi.json) and sends them to the real binary on a Firestore emulator.
# It fails on any 5xx, any status code, content type, header or body the document does not
# allow, and on a "panicked" line in the service's log.
#
#   tests/fuzz/schemathesis.sh           short form (what .ci/run runs): 100 examples per operation
#   tests/fuzz/schemathesis.sh --long    long form: 1000 examples per operation
#   FUZZ_SEED=123 tests/fuzz/schemathesis.sh   replay a run (the seed is printed)
#
# Extra arguments go to `schemathesis run` (e.g. --include-path /orders).
# FIRESTORE_ONCE_BIN=path uses that service binary instead of building one: `cargo build`
# and `cargo test` resolve dependency features differently, so the build would recompile.
# Needs python3 (with venv), the Firestore emulator (emulator/check) and PyPI for the first
# run; the virtualenv is cached under target/fuzz/ so later runs start at once.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

mode=short
if [ "${1:-}" = --long ]; then
  mode=long
  shift
fi

out=target/fuzz
venv=$out/venv
pins="schemathesis==4.32.5 openapi-spec-validator==0.9.0"
mkdir -p "$out"
if [ ! -x "$venv/bin/schemathesis" ] || [ "$(cat "$venv/.pins" 2>/dev/null)" != "$pins" ]; then
  echo "fuzz: installing $pins into $venv"
  python3 -m venv --clear "$venv"
  # shellcheck disable=SC2086 # the pins are separate words on purpose
  "$venv/bin/pip" install --quiet --disable-pip-version-check $pins
  echo "$pins" > "$venv/.pins"
fi

if [ -n "${FIRESTORE_ONCE_BIN:-}" ]; then
  service_bin=$FIRESTORE_ONCE_BIN   # built already (.ci/run passes the one cargo test built)
else
  echo "fuzz: building the service"
  cargo build --quiet --bin firestore-once
  target_dir=${CARGO_TARGET_DIR:-target}
  case "$target_dir" in /*) ;; *) target_dir=$root/$target_dir ;; esac
  service_bin=$target_dir/debug/firestore-once
fi

started=$SECONDS
host=$(EMULATOR_OWNER_PID=$$ emulator/start firestore)
service_pid=
cleanup() {
  if [ -n "$service_pid" ]; then
    kill "$service_pid" 2>/dev/null || true
    wait "$service_pid" 2>/dev/null || true
  fi
  emulator/stop firestore "${host##*:}" || true
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
project="fuzz-$(python3 -c 'import uuid; print(uuid.uuid4().hex[:12])')"
log=$out/service.log
PORT=$port GOOGLE_CLOUD_PROJECT=$project FIRESTORE_EMULATOR_HOST=$host \
  ONCE_LOG_FORMAT=json RUST_LOG=info RUST_BACKTRACE=1 \
  "$service_bin" > "$log" 2>&1 &
service_pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 120); do
  curl -fsS -m 1 "$base/healthz" > /dev/null 2>&1 && break
  if ! kill -0 "$service_pid" 2>/dev/null; then
    echo "fuzz: the service exited during start-up; its log:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.25
done

# Items the generated orders can actually buy (the examples name them).
docs="http://$host/v1/projects/$project/databases/(default)/documents"
for item in apple pear plum; do
  curl -fsS -m 60 -X POST "$docs/items?documentId=$item" -H 'content-type: application/json' \
    -d '{"fields":{"stock":{"integerValue":"1000"}}}' > /dev/null
done
# The README's example order, so the status query's example ID names a real operation.
curl -fsS -m 60 -X POST "$base/orders" -H 'content-type: application/json' \
  -d '{"order_id":"o-1","item_id":"apple","quantity":2}' > /dev/null

echo "fuzz: validating the document as OpenAPI 3.1 (served and committed)"
curl -fsS -m 60 "$base/openapi.json" > "$out/served-openapi.json"
"$venv/bin/python" - "$out/served-openapi.json" openapi.json <<'EOF'
import json, sys
from openapi_spec_validator import validate
from openapi_spec_validator.validation.validators import OpenAPIV31SpecValidator
for path in sys.argv[1:]:
    doc = json.load(open(path))
    assert doc.get("openapi", "").startswith("3.1."), f"{path}: not OpenAPI 3.1"
    validate(doc, cls=OpenAPIV31SpecValidator)
    print(f"fuzz: {path} is a valid OpenAPI {doc['openapi']} document")
EOF

seed=${FUZZ_SEED:-$(( (RANDOM << 15) | RANDOM ))}
if [ "$mode" = short ]; then
  args=(--max-examples 100 --phases examples,coverage,fuzzing,stateful)
else
  args=(--max-examples 1000 --phases examples,coverage,fuzzing,stateful)
fi
echo "fuzz: $mode form, seed $seed (FUZZ_SEED=$seed replays it)"
status=0
# From target/fuzz/, so schemathesis keeps its cache (.schemathesis/) out of the work tree.
(cd "$out" && "$root/$venv/bin/schemathesis" run "$base/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,unsupported_method \
  --seed "$seed" --workers 1 --request-timeout 20 \
  --report junit --report-dir "$root/$out/report" \
  "${args[@]}" "$@") || status=$?

if grep -q "panicked" "$log"; then
  echo "fuzz: the service panicked; see $log:" >&2
  grep -m 5 "panicked" "$log" >&2
  status=1
fi
requests=$(grep -c '"decision"' "$log" || true)
echo "fuzz: $mode form finished in $((SECONDS - started)) s; $requests POST decisions logged; log: $log"
if [ "$status" -ne 0 ]; then
  echo "fuzz: FAILED (schemathesis exit $status); report in $out/report" >&2
fi
exit "$status"
