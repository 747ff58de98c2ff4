"""Every status code the OpenAPI document promises must be reachable.

Usage: schemathesis_coverage.py OPENAPI_YAML REPO HAR...

First, every route of the Safe's route table (crates/aegis-server/src/routes.rs) must
be in the document, with each of its methods, and nothing else.

Reads the HAR files that schemathesis wrote (every request it sent and the
answer) and, for each operation of the document, each documented status code
must have been answered at least once, or its response must carry
`x-reached-by: crates/.../tests/FILE.rs::test_name`, naming a test (that
exists) which provokes it where a generator cannot (a sealed Safe, a full disk,
a request deadline). Prints a table and exits 1 if any code is unreached.
"""

import json
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def resolve(doc, node):
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise SystemExit(f"only local $ref are supported, not {ref}")
        node = doc
        for part in ref[2:].split("/"):
            node = node[part]
    return node


def path_regex(template):
    parts = re.split(r"(\{[^}]+\})", template)
    body = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{body}$")


def test_exists(repo, reference):
    file, _, name = reference.partition("::")
    path = repo / file
    if not path.is_file():
        return False
    return not name or re.search(rf"\bfn {re.escape(name)}\s*\(", path.read_text()) is not None


def router_routes(repo):
    """(METHOD, path) of every operation in the Safe's route table, `{name}` as in OpenAPI.

    Each `Route { path: NAME, ... ops: &[op(Verb, ...), ...] }` of `ROUTES` names its
    path through a constant (`pub const NAME: &str = "/path"`) and one `op(...)` per method."""
    source = repo / "crates/aegis-server/src/routes.rs"
    text = source.read_text()
    table = dict(re.findall(r'pub const ([A-Z_]+): &str = "([^"]+)"', text))
    start = text.find("pub static ROUTES")
    if start < 0:
        raise SystemExit(f"found no ROUTES table in {source}: update this script")
    routes = set()
    for block in text[start:].split("Route {")[1:]:
        name = re.search(r"path: ([A-Z_]+),", block)
        if name is None or name.group(1) not in table:
            raise SystemExit(f"a route of {source} names no path constant: update this script")
        for verb in re.findall(r"\b(?:op|transfer)\(\s*(Get|Put|Post|Delete|Patch),", block):
            routes.add((verb.upper(), table[name.group(1)]))
    if not routes:
        raise SystemExit(f"found no op(...) in the ROUTES table of {source}: update this script")
    return routes


def main():
    spec, repo, hars = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    doc = yaml.safe_load(spec.read_text())
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in METHODS if m in item}
    served = router_routes(repo)
    drift = [f"{m} {p}: served, not in the document" for m, p in sorted(served - documented)]
    drift += [f"{m} {p}: in the document, not served" for m, p in sorted(documented - served)]
    if drift:
        print("the router and the document list different routes:", *drift, sep="\n  ", file=sys.stderr)
        sys.exit(1)
    print(f"{len(served)} routes, each documented")
    operations = []
    for template, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                operations.append((method.upper(), template, path_regex(template), item[method]))

    seen = {}
    total = 0
    for har in hars:
        for entry in json.loads(Path(har).read_text())["log"]["entries"]:
            total += 1
            method = entry["request"]["method"].upper()
            path = urlsplit(entry["request"]["url"]).path
            status = entry["response"]["status"]
            # The most specific template wins: the one with the fewest parameters.
            matches = [o for o in operations if o[0] == method and o[2].match(path)]
            matches.sort(key=lambda o: o[1].count("{"))
            if matches:
                seen.setdefault((method, matches[0][1]), set()).add(status)

    missing = []
    print(f"{total} requests; status codes per operation (* reached by a named test, not by this run):")
    for method, template, _, op in operations:
        got = seen.get((method, template), set())
        marks = []
        for code, response in op.get("responses", {}).items():
            response = resolve(doc, response)
            if code.isdigit() and int(code) in got:
                marks.append(code)
                continue
            reference = response.get("x-reached-by")
            if reference and test_exists(repo, reference):
                marks.append(code + "*")
            elif reference:
                missing.append(f"{method} {template} {code}: x-reached-by names {reference}, which does not exist")
            else:
                missing.append(f"{method} {template} {code}: never answered, and no x-reached-by test")
        undocumented = sorted(str(c) for c in got if str(c) not in op.get("responses", {}))
        extra = f"  UNDOCUMENTED {' '.join(undocumented)}" if undocumented else ""
        print(f"  {method:6} {template:40} {' '.join(marks)}{extra}")
        if undocumented:
            missing.append(f"{method} {template}: answered {' '.join(undocumented)}, which the document does not list")
    if missing:
        print("unreached or undocumented status codes:", *missing, sep="\n  ", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
