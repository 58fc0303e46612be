#!/usr/bin/env python3
"""Merge the OpenAPI fragments docs/openapi.d/*.json into docs/openapi.json.

A fragment is {"paths": {...}, "components": {"schemas": {...}}} (other component
sections such as "responses" or "parameters" and a "tags" list are merged the same way;
"openapi" and "info" keys are ignored). Rules:

- a (path, method) already in the spec or in an earlier fragment is refused;
- a component that already exists is refused unless the definition is identical;
- an operationId used twice is refused;
- every "$ref" of the result must resolve.

On any problem every problem is printed, nothing is written and the exit status is 1.
Otherwise the spec is rewritten with its paths and components sorted, 2-space
indentation and a final newline. Fragments are deleted only with --remove-fragments.

    python3 docs/openapi-merge.py [--dry-run] [--remove-fragments] [--spec FILE] [--dir DIR]

Standard library only. The spec is checked against the routes by
collector/src/http/openapi_tests.rs (cargo test -p cmdb-collector openapi).
"""

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
IGNORED_TOP = {"openapi", "info"}
KNOWN_TOP = {"paths", "components", "tags"} | IGNORED_TOP


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"openapi-merge: cannot read {path}: {e}")


def operation_ids(spec):
    out = {}
    for path, item in spec.get("paths", {}).items():
        if not isinstance(item, dict):
            continue
        for method, op in item.items():
            if method in METHODS and isinstance(op, dict) and "operationId" in op:
                out.setdefault(op["operationId"], []).append(f"{method.upper()} {path}")
    return out


def refs(value, at=""):
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "$ref" and isinstance(v, str):
                yield at, v
            else:
                yield from refs(v, f"{at}/{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from refs(v, f"{at}/{i}")


def resolves(spec, ref):
    if not ref.startswith("#/"):
        return False
    node = spec
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def merge(spec, fragment, name, problems):
    """Merges one fragment into spec (in place); appends problems."""
    if not isinstance(fragment, dict):
        problems.append(f"{name}: not a JSON object")
        return
    for key in sorted(set(fragment) - KNOWN_TOP):
        problems.append(f"{name}: unknown top-level key {key!r} (expected paths, components, tags)")
    paths = spec.setdefault("paths", {})
    for path, item in fragment.get("paths", {}).items():
        if not isinstance(item, dict):
            problems.append(f"{name}: paths[{path!r}] is not an object")
            continue
        target = paths.setdefault(path, {})
        for key, value in item.items():
            if key in METHODS:
                if key in target:
                    problems.append(f"{name}: {key.upper()} {path} is already in the spec")
                else:
                    target[key] = value
            elif key in target and target[key] != value:
                problems.append(f"{name}: paths[{path!r}].{key} differs from the spec's")
            else:
                target[key] = value
    components = spec.setdefault("components", {})
    for section, entries in fragment.get("components", {}).items():
        if not isinstance(entries, dict):
            problems.append(f"{name}: components.{section} is not an object")
            continue
        target = components.setdefault(section, {})
        for cname, definition in entries.items():
            if cname in target and target[cname] != definition:
                problems.append(
                    f"{name}: components.{section}.{cname} is already defined differently "
                    f"(rename it, or reuse the existing one with a $ref)"
                )
            else:
                target[cname] = definition
    if "tags" in fragment:
        tags = spec.setdefault("tags", [])
        known = {t.get("name") for t in tags if isinstance(t, dict)}
        for tag in fragment["tags"]:
            if isinstance(tag, dict) and tag.get("name") not in known:
                tags.append(tag)
                known.add(tag.get("name"))


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", type=Path, default=HERE / "openapi.json")
    ap.add_argument("--dir", type=Path, default=HERE / "openapi.d")
    ap.add_argument("--dry-run", action="store_true", help="check and report, write nothing")
    ap.add_argument("--remove-fragments", action="store_true",
                    help="delete the fragments once merged and written")
    args = ap.parse_args(argv)

    spec = load(args.spec)
    fragments = sorted(args.dir.glob("*.json")) if args.dir.is_dir() else []
    if not fragments:
        print(f"openapi-merge: no fragments in {args.dir}; {args.spec} unchanged")
        return 0
    problems = []
    for f in fragments:
        merge(spec, load(f), f.name, problems)
    for op_id, ops in sorted(operation_ids(spec).items()):
        if len(ops) > 1:
            problems.append(f"operationId {op_id!r} is used by {', '.join(ops)}")
    for at, ref in refs(spec):
        if not resolves(spec, ref):
            problems.append(f"{at}: $ref {ref} does not resolve")
    if problems:
        print("openapi-merge: nothing was written:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1

    spec["paths"] = dict(sorted(spec["paths"].items()))
    spec["components"] = {
        section: dict(sorted(entries.items())) if section != "securitySchemes" else entries
        for section, entries in spec["components"].items()
    }
    text = json.dumps(spec, indent=2, ensure_ascii=False) + "\n"
    names = ", ".join(f.name for f in fragments)
    if args.dry_run:
        print(f"openapi-merge: {names} merge cleanly (dry run, nothing written)")
        return 0
    tmp = args.spec.with_name(args.spec.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.spec)
    print(f"openapi-merge: merged {names} into {args.spec}")
    if args.remove_fragments:
        for f in fragments:
            f.unlink()
            print(f"openapi-merge: removed {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
