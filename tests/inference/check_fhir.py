#!/usr/bin/env python3
"""FHIR R4 conformance check for chexvision-inference's `POST /v1/predict`.

    check_fhir.py BASE_URL IMAGE_PATH [--key KEY] [--schema PATH]

Sends IMAGE_PATH raw (content type from its extension) with
`Accept: application/fhir+json`, then

1. validates every resource in the answer against HL7's FHIR R4 (4.0.1) JSON
   Schema (fhir.schema.json, from fhir_schema.sh; path from --schema or the
   FHIR_SCHEMA environment variable), with the validator class the schema
   declares (draft-06);
2. checks what the schema cannot: the answer is a Bundle (type `collection`)
   holding one DiagnosticReport, one Device (the model) and 14 Observations,
   or a DiagnosticReport with those as `contained` resources; the report is
   `preliminary`, radiology (v2-0074 RAD), coded with a LOINC chest radiograph
   code, has a conclusion and reaches the model's Device; its 14 results
   resolve to the 14 Observations, one per NIH ChestX-ray14 finding, each with
   a probability valueQuantity in [0, 1] and a v3 ObservationInterpretation
   POS/NEG that agrees with the threshold (referenceRange.high) when given;
3. cross-checks the probabilities, positives, thresholds and model version
   against the plain JSON answer for the same image (--no-cross-check to skip);
4. proves the validators bite: deliberately broken copies of the answer
   (status "bogus", an unknown element, a string probability; a flipped
   interpretation, a dangling result reference) must fail.

Standard library + jsonschema only. Exit 0 when everything holds, 1 on any
failure (each one listed), 2 on bad usage or an unreachable server.
"""
import argparse
import copy
import json
import os
import sys
import time
import urllib.error
import urllib.request

try:
    import jsonschema
    from jsonschema.exceptions import best_match
    from jsonschema.validators import validator_for
except ImportError:  # pragma: no cover
    sys.exit("check_fhir: jsonschema is not installed (pip install -r tests/inference/requirements.txt)")

FINDINGS = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
            "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
            "Pleural_Thickening", "Hernia"]
LOINC = "http://loinc.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V3_INTERP = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
UCUM = "http://unitsofmeasure.org"
# LOINC codes for a plain chest radiograph study/report. The model reads one
# frontal image, so 36554-4 "XR Chest Single view" is the precise one;
# 30745-4 "XR Chest Views" (unspecified count) is the generic one.
CHEST_XR_LOINC = {
    "36554-4": "XR Chest Single view",
    "30745-4": "XR Chest Views",
    "36643-5": "XR Chest 2 Views",
    "30746-2": "Portable XR Chest Views",
}
NOT_CHEST_XR = {"24627-2": "CT Chest"}
CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                 ".dcm": "application/dicom", ".dicom": "application/dicom"}
TOL_CROSS = 1e-4  # FHIR decimals may be rounded; the JSON answer carries f32 values


def norm(name):
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


FINDING_BY_NORM = {norm(f): f for f in FINDINGS}


class Failures:
    def __init__(self):
        self.items = []

    def add(self, msg):
        self.items.append(msg)

    def check(self, cond, msg):
        if not cond:
            self.add(msg)
        return bool(cond)


# --------------------------------------------------------------------------
# HTTP


def post(url, body, headers, timeout):
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers.items()), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read()


def header(headers, name):
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return None


# --------------------------------------------------------------------------
# Schema validation


class FhirSchema:
    """HL7's fhir.schema.json, validated per resource.

    The schema's root (and ResourceList, used by Bundle.entry.resource and
    DomainResource.contained) is a `oneOf` over all 146 R4 resource types,
    each pinning `resourceType` with `const`. Validating through that oneOf
    is exact but slow (jsonschema enumerates every branch's errors: ~10 s for
    a report with 15 contained resources) and its error messages point at the
    wrong branch. So each resource is validated against its own definition,
    with ResourceList relaxed to "an object" in the container and every
    nested resource validated on its own: equivalent, since exactly one
    branch can match a given resourceType. The root oneOf is still run once
    on the whole answer as a confirmation (--skip-root-check to skip).
    """

    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            self.schema = json.load(f)
        s = self.schema
        if s.get("id") != "http://hl7.org/fhir/json-schema/4.0":
            raise SystemExit("check_fhir: %s is not the FHIR R4 schema (id %r)" % (path, s.get("id")))
        self.cls = validator_for(s, default=jsonschema.Draft7Validator)
        self.types = set(s["discriminator"]["mapping"])
        for t in ("Bundle", "DiagnosticReport", "Observation", "Device"):
            if t not in self.types:
                raise SystemExit("check_fhir: %s has no %s definition" % (path, t))
        relaxed = dict(s["definitions"])
        relaxed["ResourceList"] = {"type": "object"}
        self._relaxed_defs = relaxed
        self._validators = {}
        self._root = None

    def validator(self, rtype):
        v = self._validators.get(rtype)
        if v is None:
            v = self.cls({"$ref": "#/definitions/%s" % rtype, "definitions": self._relaxed_defs})
            self._validators[rtype] = v
        return v

    def errors(self, doc):
        """[(json path, message)] for every resource in doc, nested ones included."""
        out = []
        for path, res in iter_resources(doc, "$"):
            rtype = res.get("resourceType")
            if rtype not in self.types:
                out.append((path, "resourceType %r is not an R4 resource type" % rtype))
                continue
            errs = list(self.validator(rtype).iter_errors(res))
            for e in sorted(errs, key=lambda e: list(e.absolute_path)):
                where = path + "".join("[%r]" % p if isinstance(p, int) else "." + str(p) for p in e.absolute_path)
                out.append((where, e.message if len(e.message) < 300 else e.message[:300] + "…"))
        return out

    def root_valid(self, doc):
        if self._root is None:
            self._root = self.cls(self.schema)
        if self._root.is_valid(doc):
            return None
        e = best_match(self._root.iter_errors(doc))
        return "%s at %s" % (e.message[:300], "/".join(map(str, e.absolute_path)))


def iter_resources(node, path):
    """Every dict carrying a resourceType: FHIR data types never have one."""
    if isinstance(node, dict):
        if isinstance(node.get("resourceType"), str):
            yield path, node
        for k, v in node.items():
            yield from iter_resources(v, "%s.%s" % (path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from iter_resources(v, "%s[%d]" % (path, i))


# --------------------------------------------------------------------------
# Semantic checks


class Doc:
    """The answer's resources and how its references resolve."""

    def __init__(self, doc, fails):
        self.doc = doc
        self.form = None
        self.report = None
        self.members = []  # resources other than the report
        self.index = {}  # reference string -> resource
        rt = doc.get("resourceType") if isinstance(doc, dict) else None
        if rt == "Bundle":
            self.form = "Bundle"
            fails.check(doc.get("type") == "collection",
                        "Bundle.type is %r, expected 'collection'" % doc.get("type"))
            entries = doc.get("entry") or []
            resources = []
            for i, e in enumerate(entries):
                r = e.get("resource") if isinstance(e, dict) else None
                if not fails.check(isinstance(r, dict), "Bundle.entry[%d] has no resource" % i):
                    continue
                resources.append(r)
                full = e.get("fullUrl")
                if full:
                    fails.check(full not in self.index, "Bundle.entry[%d].fullUrl %s is not unique" % (i, full))
                    self.index[full] = r
                if r.get("id"):
                    self.index.setdefault("%s/%s" % (r.get("resourceType"), r["id"]), r)
            reports = [r for r in resources if r.get("resourceType") == "DiagnosticReport"]
            if fails.check(len(reports) == 1, "Bundle holds %d DiagnosticReports, expected 1" % len(reports)):
                self.report = reports[0]
            self.members = [r for r in resources if r is not self.report]
            if self.report is not None and self.report.get("contained"):
                fails.add("Bundle form: the DiagnosticReport should not also contain resources")
        elif rt == "DiagnosticReport":
            self.form = "DiagnosticReport+contained"
            self.report = doc
            for i, r in enumerate(doc.get("contained") or []):
                if not fails.check(isinstance(r, dict) and r.get("id"), "contained[%d] has no id" % i):
                    continue
                key = "#" + r["id"]
                fails.check(key not in self.index, "contained id %r is not unique" % r["id"])
                self.index[key] = r
                self.members.append(r)
                fails.check(not r.get("contained"), "contained[%d] nests contained resources" % i)
        else:
            fails.add("answer is a %r; expected a Bundle or a DiagnosticReport" % rt)

    def resolve(self, ref):
        if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
            return None
        r = ref["reference"]
        if r in self.index:
            return self.index[r]
        if self.form == "Bundle" and "/" in r and not r.startswith("urn:"):
            tail = "/".join(r.rstrip("/").split("/")[-2:])  # absolute URL -> Type/id
            return self.index.get(tail)
        return None

    def local_references(self):
        """Every Reference.reference in the answer that must resolve inside it."""
        out = []

        def walk(node, path):
            if isinstance(node, dict):
                ref = node.get("reference")
                if isinstance(ref, str) and (ref.startswith("#") or ref.startswith("urn:uuid:")
                                             or ref.startswith("urn:oid:")):
                    out.append((path, node))
                for k, v in node.items():
                    walk(v, "%s.%s" % (path, k))
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    walk(v, "%s[%d]" % (path, i))

        walk(self.doc, "$")
        return out


def codings(cc):
    return (cc or {}).get("coding") or [] if isinstance(cc, dict) else []


def finding_of(obs):
    code = obs.get("code") or {}
    cands = [code.get("text")] + [c.get("code") for c in codings(code)] + [c.get("display") for c in codings(code)]
    hits = {FINDING_BY_NORM[norm(c)] for c in cands if c and norm(c) in FINDING_BY_NORM}
    return hits.pop() if len(hits) == 1 else (None if not hits else sorted(hits))


def semantic_checks(doc, fails, loinc_codes):
    """Returns a summary dict (used by the cross-check)."""
    d = Doc(doc, fails)
    rep = d.report
    summary = {"form": d.form, "findings": {}, "device": None}
    if rep is None:
        return summary

    # -- DiagnosticReport
    fails.check(rep.get("status") == "preliminary",
                "DiagnosticReport.status is %r, expected 'preliminary' (model output, not reviewed)"
                % rep.get("status"))
    cats = [c for cat in rep.get("category") or [] for c in codings(cat)]
    fails.check(any(c.get("system") == V2_0074 and c.get("code") == "RAD" for c in cats),
                "DiagnosticReport.category lacks %s#RAD" % V2_0074)
    code = rep.get("code")
    if fails.check(isinstance(code, dict) and (codings(code) or code.get("text")), "DiagnosticReport has no code"):
        lo = [c for c in codings(code) if c.get("system") == LOINC]
        if fails.check(lo, "DiagnosticReport.code has no %s coding" % LOINC):
            c = lo[0].get("code")
            if c in NOT_CHEST_XR:
                fails.add("DiagnosticReport.code is LOINC %s = %s, not a chest radiograph" % (c, NOT_CHEST_XR[c]))
            else:
                fails.check(c in loinc_codes, "DiagnosticReport.code LOINC %r is not a chest radiograph code (%s)"
                            % (c, ", ".join("%s %s" % kv for kv in sorted(loinc_codes.items()))))
    concl = rep.get("conclusion")
    fails.check(isinstance(concl, str) and concl.strip(), "DiagnosticReport.conclusion is missing or empty")

    # -- the model: a Device reached from performer or from every Observation.device
    devices = [r for r in d.members if r.get("resourceType") == "Device"]
    perf_dev = [d.resolve(p) for p in rep.get("performer") or []]
    perf_dev = [r for r in perf_dev if r is not None and r.get("resourceType") == "Device"]
    if perf_dev:
        print("  note: DiagnosticReport.performer references a Device; R4 lists "
              "Practitioner|PractitionerRole|Organization|CareTeam as its targets "
              "(Observation.device is the R4 place for the model)")

    # -- results -> Observations
    obs_all = [r for r in d.members if r.get("resourceType") == "Observation"]
    results = rep.get("result") or []
    fails.check(len(results) == 14, "DiagnosticReport.result has %d references, expected 14" % len(results))
    resolved = []
    for i, ref in enumerate(results):
        r = d.resolve(ref)
        if not fails.check(r is not None, "DiagnosticReport.result[%d] %r does not resolve inside the answer"
                           % (i, (ref or {}).get("reference"))):
            continue
        if not fails.check(r.get("resourceType") == "Observation",
                           "DiagnosticReport.result[%d] resolves to a %s" % (i, r.get("resourceType"))):
            continue
        fails.check(all(r is not x for x in resolved), "DiagnosticReport.result[%d] repeats an Observation" % i)
        resolved.append(r)
    fails.check(len(obs_all) == 14, "the answer holds %d Observations, expected 14" % len(obs_all))
    orphans = [o for o in obs_all if all(o is not x for x in resolved)]
    fails.check(not orphans, "%d Observation(s) are not referenced by DiagnosticReport.result" % len(orphans))
    other = sorted({r.get("resourceType") for r in d.members} - {"Observation", "Device"})
    if other:
        print("  note: the answer also holds %s" % ", ".join(other))

    seen = {}
    obs_devices = []
    for i, o in enumerate(resolved):
        where = "Observation for result[%d]" % i
        f = finding_of(o)
        if not fails.check(isinstance(f, str), "%s: code names no (or several) ChestX-ray14 findings: %r"
                           % (where, (o.get("code") or {}))):
            continue
        where = "Observation %s" % f
        fails.check(f not in seen, "%s appears twice" % where)
        fails.check(o.get("status") == "preliminary",
                    "%s: status is %r, expected 'preliminary'" % (where, o.get("status")))
        vq = o.get("valueQuantity")
        value = None
        if fails.check(isinstance(vq, dict), "%s: no valueQuantity (R4 Observation has no valueDecimal; "
                       "a probability is valueQuantity {value, system %s, code '1'})" % (where, UCUM)):
            value = vq.get("value")
            if fails.check(isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0,
                           "%s: valueQuantity.value %r is not a probability in [0, 1]" % (where, value)):
                pass
            else:
                value = None
            if "code" in vq or "system" in vq:
                fails.check(vq.get("system") == UCUM and vq.get("code") == "1",
                            "%s: valueQuantity unit is %s#%s, expected %s#1 (a probability)"
                            % (where, vq.get("system"), vq.get("code"), UCUM))
        interp = [c for cc in o.get("interpretation") or [] for c in codings(cc) if c.get("system") == V3_INTERP]
        flag = None
        if fails.check(len(interp) == 1 and interp[0].get("code") in ("POS", "NEG"),
                       "%s: interpretation must be one %s coding POS or NEG, got %r"
                       % (where, V3_INTERP, [c.get("code") for c in interp])):
            flag = interp[0]["code"]
        thr = None
        for rr in o.get("referenceRange") or []:
            hi = (rr or {}).get("high") or {}
            if isinstance(hi.get("value"), (int, float)):
                thr = hi["value"]
        if thr is not None and value is not None and flag is not None and abs(value - thr) > 1e-6:
            want = "POS" if value >= thr else "NEG"
            fails.check(flag == want, "%s: probability %.6f vs threshold %.6f should be %s, says %s"
                        % (where, value, thr, want, flag))
        dev = d.resolve(o.get("device")) if o.get("device") else None
        if o.get("device"):
            fails.check(dev is not None and dev.get("resourceType") == "Device",
                        "%s: device %r does not resolve to a Device in the answer"
                        % (where, o["device"].get("reference")))
        obs_devices.append(dev)
        seen[f] = {"probability": value, "flag": flag, "threshold": thr}
    missing = [f for f in FINDINGS if f not in seen]
    fails.check(not missing, "no Observation for: %s" % ", ".join(missing))
    order = [finding_of(o) for o in resolved]
    if order != FINDINGS[:len(order)] and not missing:
        print("  note: results are not in the ChestX-ray14 order of the JSON answer")

    model_devs = perf_dev or ([obs_devices[0]] if obs_devices and all(
        x is not None and x is obs_devices[0] for x in obs_devices) else [])
    if fails.check(model_devs, "the report does not reach the model: need DiagnosticReport.performer -> Device "
                   "or every Observation.device -> the same Device (%d Device(s) in the answer)" % len(devices)):
        dev = model_devs[0]
        names = [n.get("name") for n in dev.get("deviceName") or [] if n.get("name")]
        versions = [v.get("value") for v in dev.get("version") or [] if v.get("value")]
        fails.check(names, "the model Device has no deviceName")
        fails.check(versions, "the model Device has no version[].value (the model version)")
        summary["device"] = {"names": names, "versions": versions}

    # -- every local reference resolves
    for path, ref in d.local_references():
        fails.check(d.resolve(ref) is not None, "%s.reference %r does not resolve" % (path, ref["reference"]))
    summary["findings"] = seen
    summary["report"] = rep
    return summary


def cross_check(fails, fhir_summary, pred):
    if not isinstance(pred, dict) or not isinstance(pred.get("findings"), list):
        fails.add("JSON answer has no findings list")
        return
    names = [f.get("name") for f in pred["findings"]]
    fails.check(names == FINDINGS, "JSON answer findings are not the 14 ChestX-ray14 names in order: %r" % names)
    for f in pred["findings"]:
        got = fhir_summary["findings"].get(f.get("name"))
        if got is None or got["probability"] is None:
            continue
        fails.check(abs(got["probability"] - f["probability"]) <= TOL_CROSS,
                    "%s: FHIR probability %.6f != JSON %.6f" % (f["name"], got["probability"], f["probability"]))
        if got["flag"]:
            fails.check((got["flag"] == "POS") == bool(f.get("positive")),
                        "%s: FHIR says %s, JSON positive=%s" % (f["name"], got["flag"], f.get("positive")))
        if got["threshold"] is not None and "threshold" in f:
            fails.check(abs(got["threshold"] - f["threshold"]) <= TOL_CROSS,
                        "%s: FHIR threshold %s != JSON %s" % (f["name"], got["threshold"], f["threshold"]))
    ver = (pred.get("model") or {}).get("version")
    dev = fhir_summary.get("device")
    if ver and dev:
        fails.check(ver in dev["versions"], "model version %r (JSON) is not in the Device's versions %r"
                    % (ver, dev["versions"]))


# --------------------------------------------------------------------------
# Negative controls


def find_report(doc):
    if doc.get("resourceType") == "DiagnosticReport":
        return doc
    for e in doc.get("entry") or []:
        if (e.get("resource") or {}).get("resourceType") == "DiagnosticReport":
            return e["resource"]
    return None


def first_observation(doc):
    for _, r in iter_resources(doc, "$"):
        if r.get("resourceType") == "Observation":
            return r
    return None


def negative_controls(fails, schema, doc, loinc_codes):
    """Broken copies of a valid answer must be rejected."""
    schema_cases = []

    def bogus_status(x):
        find_report(x)["status"] = "bogus"

    def unknown_element(x):
        first_observation(x)["valueProbability"] = 0.5

    def string_value(x):
        first_observation(x)["valueQuantity"]["value"] = "0.5"

    def wrong_bundle_type(x):
        if x.get("resourceType") == "Bundle":
            x["type"] = "collector"
        else:
            x["contained"][0]["resourceType"] = "Observaton"

    schema_cases = [("DiagnosticReport.status 'bogus'", bogus_status),
                    ("unknown element Observation.valueProbability", unknown_element),
                    ("string probability in valueQuantity.value", string_value),
                    ("bad Bundle.type / misspelled resourceType", wrong_bundle_type)]
    for name, mutate in schema_cases:
        broken = copy.deepcopy(doc)
        try:
            mutate(broken)
        except (TypeError, KeyError, AttributeError, IndexError):
            print("  negative control skipped (answer lacks the element): %s" % name)
            continue
        errs = schema.errors(broken)
        if fails.check(errs, "schema validator ACCEPTED a broken answer (%s): it does not bite" % name):
            print("  schema rejects %-48s -> %s: %s" % (name, errs[0][0], errs[0][1][:90]))

    def flip_interpretation(x):
        o = first_observation(x)
        c = o["interpretation"][0]["coding"][0]
        c["code"] = "NEG" if c["code"] == "POS" else "POS"
        o["valueQuantity"]["value"] = 0.0 if c["code"] == "POS" else 1.0
        o.setdefault("referenceRange", [{"high": {"value": 0.5}}])

    def dangling_result(x):
        find_report(x)["result"][0]["reference"] = "urn:uuid:00000000-0000-4000-8000-000000000000"

    def final_status(x):
        find_report(x)["status"] = "final"

    for name, mutate in [("POS/NEG contradicting the threshold", flip_interpretation),
                         ("a result reference that resolves nowhere", dangling_result),
                         ("status 'final' (valid R4, but not unreviewed model output)", final_status)]:
        broken = copy.deepcopy(doc)
        try:
            mutate(broken)
        except (TypeError, KeyError, AttributeError, IndexError):
            print("  negative control skipped (answer lacks the element): %s" % name)
            continue
        f2 = Failures()
        semantic_checks(broken, f2, loinc_codes)
        if fails.check(f2.items, "semantic checks ACCEPTED a broken answer (%s)" % name):
            print("  checks reject %-48s -> %s" % (name, f2.items[0][:100]))


# --------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base_url")
    ap.add_argument("image")
    ap.add_argument("--key", default=os.environ.get("CHEXVISION_API_KEY"),
                    help="bearer key (default: $CHEXVISION_API_KEY)")
    ap.add_argument("--schema", default=os.environ.get("FHIR_SCHEMA"),
                    help="path to fhir.schema.json (default: $FHIR_SCHEMA; see fhir_schema.sh)")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--no-cross-check", action="store_true", help="skip the comparison with the JSON answer")
    ap.add_argument("--skip-root-check", action="store_true",
                    help="skip the (slow for contained resources) validation through the schema's root oneOf")
    ap.add_argument("--save", metavar="PATH", help="write the FHIR answer there")
    a = ap.parse_args()
    if not a.schema:
        print("check_fhir: no schema: pass --schema or set FHIR_SCHEMA "
              "(FHIR_SCHEMA=$(tests/inference/fhir_schema.sh))", file=sys.stderr)
        return 2
    ext = os.path.splitext(a.image)[1].lower()
    if ext not in CONTENT_TYPES:
        print("check_fhir: cannot tell the content type of %s (png, jpg, jpeg, dcm)" % a.image, file=sys.stderr)
        return 2
    with open(a.image, "rb") as f:
        image = f.read()
    t0 = time.monotonic()
    schema = FhirSchema(a.schema)
    t_load = time.monotonic() - t0
    loinc_codes = dict(CHEST_XR_LOINC)

    url = a.base_url.rstrip("/") + "/v1/predict"
    hdr = {"Content-Type": CONTENT_TYPES[ext], "Accept": "application/fhir+json"}
    if a.key:
        hdr["Authorization"] = "Bearer " + a.key
    fails = Failures()
    t1 = time.monotonic()
    try:
        status, rh, body = post(url, image, hdr, a.timeout)
    except (urllib.error.URLError, OSError) as e:
        print("check_fhir: cannot reach %s: %s" % (url, e), file=sys.stderr)
        return 2
    t_post = time.monotonic() - t1
    print("POST %s (%s, %d bytes, Accept: application/fhir+json) -> %d %s in %.0f ms"
          % (url, CONTENT_TYPES[ext], len(image), status, header(rh, "Content-Type"), t_post * 1000))
    if status != 200:
        print("FAIL: expected 200, got %d: %s" % (status, body[:500].decode("utf-8", "replace")))
        return 1
    ctype = (header(rh, "Content-Type") or "").split(";")[0].strip()
    fails.check(ctype == "application/fhir+json", "Content-Type is %r, expected application/fhir+json" % ctype)
    try:
        doc = json.loads(body)
    except ValueError as e:
        print("FAIL: the answer is not JSON: %s" % e)
        return 1
    if a.save:
        with open(a.save, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)

    # 1. schema
    t2 = time.monotonic()
    errs = schema.errors(doc)
    for where, msg in errs[:25]:
        fails.add("schema: %s: %s" % (where, msg))
    if len(errs) > 25:
        fails.add("schema: … and %d more errors" % (len(errs) - 25))
    n_res = sum(1 for _ in iter_resources(doc, "$"))
    t_schema = time.monotonic() - t2
    print("schema: %d resource(s) validated against FHIR R4 (%s) in %.2f s: %s"
          % (n_res, schema.cls.__name__, t_schema, "ok" if not errs else "%d error(s)" % len(errs)))
    if not errs and not a.skip_root_check:
        t3 = time.monotonic()
        root_err = schema.root_valid(doc)
        fails.check(root_err is None, "schema (root oneOf): %s" % root_err)
        print("schema: whole answer through the schema root (oneOf of %d resource types) in %.2f s: %s"
              % (len(schema.types), time.monotonic() - t3, "ok" if root_err is None else "FAILED"))

    # 2. semantics
    summary = semantic_checks(doc, fails, loinc_codes)
    print("structure: %s, %d Observation(s) for %d finding(s), model device %s"
          % (summary["form"], sum(1 for _, r in iter_resources(doc, "$") if r.get("resourceType") == "Observation"),
             len(summary["findings"]), (summary.get("device") or {}).get("versions")))

    # 3. cross-check with the JSON answer
    if not a.no_cross_check:
        hdr2 = dict(hdr, Accept="application/json")
        status2, rh2, body2 = post(url, image, hdr2, a.timeout)
        if fails.check(status2 == 200, "JSON answer for the same image: %d" % status2):
            try:
                pred = json.loads(body2)
            except ValueError:
                pred = None
            n_before = len(fails.items)
            cross_check(fails, summary, pred)
            print("cross-check with the JSON answer: %s"
                  % ("ok" if len(fails.items) == n_before else "%d mismatch(es)" % (len(fails.items) - n_before)))

    # 4. negative controls (only meaningful on an answer that passed)
    if not fails.items:
        negative_controls(fails, schema, doc, loinc_codes)

    total = time.monotonic() - t0
    if fails.items:
        print("\nFAIL: %d problem(s) with the FHIR answer:" % len(fails.items))
        for m in fails.items:
            print("  - " + m)
        print("(%.2f s, schema load %.2f s)" % (total, t_load))
        return 1
    print("\nOK: FHIR R4 answer conforms (%.2f s, schema load %.2f s)" % (total, t_load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
