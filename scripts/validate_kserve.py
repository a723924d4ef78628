"""The KServe manifests in docker/kserve checked offline against KServe's own CRD schemas.

Run through scripts/validate-kserve (which makes the virtual environment):

    python validate_kserve.py [MANIFEST.yaml ...]     # default: docker/kserve/*.yaml
    python validate_kserve.py --update-schemas CRD.yaml ...

Each document is checked three ways, as the API server and KServe's controller would:
- against the openAPIV3Schema of its kind and version (docker/kserve/schemas/, jsonschema);
- strictly: every field must be declared by the schema, as `kubectl apply --validate=strict`
  and kubernetes-validate --strict refuse what the API server would otherwise prune silently
  (a misspelt field is dropped, not refused, without it); duplicate keys are refused too, and
  metadata is checked against ObjectMeta's fields (the CRD leaves it to the API server);
- together: an InferenceService naming a runtime given in the same run must match one of its
  supportedModelFormats and protocolVersions, as KServe checks when it places the model.
Prints what it checked; exits 1 on any error.

--update-schemas writes the served version's openAPIV3Schema of each CRD given (a file from
kserve/kserve's config/crd/full/) into docker/kserve/schemas/<kind>-<version>.json.
"""

import argparse
import difflib
import json
import pathlib
import sys

import jsonschema
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
KSERVE = ROOT / "docker" / "kserve"
SCHEMAS = KSERVE / "schemas"
GROUP = "serving.kserve.io"
# ObjectMeta's fields that a manifest may set (the rest are written by the API server).
OBJECT_META = {
    "name",
    "generateName",
    "namespace",
    "labels",
    "annotations",
    "finalizers",
    "ownerReferences",
}


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def where(path):
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


def hint(key, known):
    close = difflib.get_close_matches(str(key), list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def strict(value, schema, path, errors, counter):
    """Appends an error for every field that the schema does not declare, walking the whole
    document; counts the fields it found declared."""
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            if key in props:
                counter[0] += 1
                strict(sub, props[key], path + [key], errors, counter)
            elif isinstance(extra, dict):
                counter[0] += 1
                strict(sub, extra, path + [key], errors, counter)
            elif extra is not True:
                errors.append(f"{where(path + [key])}: unknown field{hint(key, props)}")
    elif isinstance(value, list):
        items = schema.get("items", {})
        for i, sub in enumerate(value):
            strict(sub, items, path + [i], errors, counter)
        list_keys(value, schema, path, errors)


def list_keys(value, schema, path, errors):
    """A list of x-kubernetes-list-type map holds one item per key (set: per value), as the
    API server requires; a missing key field takes its schema default."""
    kind = schema.get("x-kubernetes-list-type")
    if kind == "set":
        keys = [json.dumps(v, sort_keys=True) for v in value]
    elif kind == "map":
        props = schema.get("items", {}).get("properties", {})
        names = schema.get("x-kubernetes-list-map-keys", [])
        keys = [
            json.dumps([v.get(k, props.get(k, {}).get("default")) for k in names])
            for v in value
            if isinstance(v, dict)
        ]
    else:
        return
    for key in sorted({k for k in keys if keys.count(k) > 1}):
        errors.append(f"{where(path)}: duplicate item {key} (list-type {kind})")


def check_metadata(meta, path, errors):
    if not isinstance(meta, dict):
        return errors.append(f"{where(path)}: must be an object")
    for key in meta:
        if key not in OBJECT_META:
            errors.append(
                f"{where(path + [key])}: unknown field (ObjectMeta){hint(key, OBJECT_META)}"
            )
    if not meta.get("name") and not meta.get("generateName"):
        errors.append(f"{where(path + ['name'])}: required")
    for key in ("labels", "annotations"):
        entries = meta.get(key, {})
        if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
            errors.append(f"{where(path + [key])}: must map names to strings")


def schema_for(doc):
    api = doc.get("apiVersion", "")
    group, _, version = api.partition("/")
    if group != GROUP:
        return None, f"apiVersion {api!r} is not {GROUP}/..."
    file = SCHEMAS / f"{str(doc.get('kind', '')).lower()}-{version}.json"
    if not file.is_file():
        return None, f"no schema for {doc.get('kind')} {api} (looked for {file.relative_to(ROOT)})"
    return json.loads(file.read_text()), None


def check_document(doc):
    """Returns (errors, fields found declared)."""
    schema, problem = schema_for(doc)
    if problem:
        return [problem], 0
    errors = []
    validator = jsonschema.Draft4Validator(schema)
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        errors.append(f"{where(list(e.absolute_path))}: {e.message}")
    counter = [0]
    strict({k: v for k, v in doc.items() if k != "metadata"}, schema, [], errors, counter)
    check_metadata(doc.get("metadata"), ["metadata"], errors)
    return errors, counter[0]


def check_together(docs):
    """KServe's controller's own checks for an InferenceService naming a runtime given here.
    Returns (errors, InferenceServices checked)."""
    runtimes = {
        d["metadata"].get("name"): d.get("spec", {})
        for _, d in docs
        if d.get("kind") in ("ClusterServingRuntime", "ServingRuntime")
    }
    errors = []
    checked = 0
    for name, d in docs:
        if d.get("kind") != "InferenceService":
            continue
        model = d.get("spec", {}).get("predictor", {}).get("model", {})
        runtime = model.get("runtime")
        if runtime not in runtimes:
            continue
        checked += 1
        spec = runtimes[runtime]
        fmt = model.get("modelFormat", {})
        if not any(
            f.get("name") == fmt.get("name")
            and (fmt.get("version") is None or f.get("version") == fmt.get("version"))
            for f in spec.get("supportedModelFormats", [])
        ):
            errors.append(f"{name}: runtime {runtime} does not support model format {fmt}")
        # Unset, it becomes the runtime's first; a runtime without protocolVersions speaks v1.
        protocol = model.get("protocolVersion")
        if protocol and protocol not in spec.get("protocolVersions", ["v1"]):
            errors.append(f"{name}: runtime {runtime} does not speak protocolVersion {protocol}")
        # KServe merges the model's container into the runtime's container of this name.
        if not any(c.get("name") == "kserve-container" for c in spec.get("containers", [])):
            errors.append(f"{name}: runtime {runtime} has no container named kserve-container")
    return errors, checked


def validate(files):
    failed = False
    docs = []
    for file in files:
        shown = file.resolve().relative_to(ROOT) if file.resolve().is_relative_to(ROOT) else file
        try:
            loaded = [d for d in yaml.load_all(file.read_text(), Loader=UniqueKeyLoader) if d]
        except (OSError, yaml.YAMLError) as e:
            print(f"FAIL {shown}: {e}")
            failed = True
            continue
        for doc in loaded:
            if not isinstance(doc, dict):
                print(f"FAIL {shown}: a document is a {type(doc).__name__}, not a mapping")
                failed = True
                continue
            errors, fields = check_document(doc)
            meta = doc.get("metadata")
            name = meta.get("name") if isinstance(meta, dict) else None
            label = f"{doc.get('kind')} {name} ({doc.get('apiVersion')})"
            if errors:
                failed = True
                print(f"FAIL {shown}: {label}")
                for error in errors:
                    print(f"  {error}")
            else:
                docs.append((f"{shown}: {label}", doc))
                print(f"ok   {shown}: {label}: schema and strict check passed, {fields} fields")
    errors, checked = check_together(docs)
    for error in errors:
        print(f"FAIL {error}")
    if checked and not errors:
        print(f"ok   {checked} InferenceService(s) agree with their runtime given here")
    return not (failed or errors)


def update_schemas(crds):
    for file in crds:
        crd = yaml.safe_load(file.read_text())
        kind = crd["spec"]["names"]["kind"]
        served = [v for v in crd["spec"]["versions"] if v.get("served")]
        if len(served) != 1:
            sys.exit(f"{file}: {len(served)} served versions; expected one")
        version = served[0]
        out = SCHEMAS / f"{kind.lower()}-{version['name']}.json"
        text = json.dumps(
            version["schema"]["openAPIV3Schema"], sort_keys=True, separators=(",", ":")
        )
        out.write_text(text + "\n")
        print(f"wrote {out.relative_to(ROOT)} ({len(text) + 1} bytes) from {file}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=pathlib.Path)
    parser.add_argument("--update-schemas", action="store_true")
    args = parser.parse_args()
    if args.update_schemas:
        return update_schemas(args.files)
    files = args.files or sorted(KSERVE.glob("*.yaml"))
    if not files:
        sys.exit(f"no manifests in {KSERVE.relative_to(ROOT)}")
    print(f"schemas: {', '.join(sorted(p.name for p in SCHEMAS.glob('*.json')))}")
    if not validate(files):
        sys.exit(1)


if __name__ == "__main__":
    main()
