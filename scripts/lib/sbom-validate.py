#!/usr/bin/env python3
"""Validate an SBOM with its standard's own reference tool (test helper; scripts/deps.sh installs them).

    sbom-validate.py spdx FILE        spdx-tools (pyspdxtools's library): parse, then validate the document
    sbom-validate.py cyclonedx FILE   cyclonedx-python-lib: JsonStrictValidator for CycloneDX 1.5

Prints every problem, one per line, and exits 1 when there is any; exits 0 and prints "ok" otherwise.
"""
import sys


def spdx(path):
    from spdx_tools.spdx.parser.error import SPDXParsingError
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    try:
        doc = parse_file(path)
    except SPDXParsingError as e:
        return [f"parsing: {m}" for m in e.get_messages()]
    return [f"{m.context.full_element if m.context else ''}: {m.validation_message}" for m in validate_full_spdx_document(doc)]


def cyclonedx(path):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    with open(path, encoding="utf-8") as f:
        text = f.read()
    err = JsonStrictValidator(SchemaVersion.V1_5).validate_str(text)
    return [] if err is None else [str(err)]


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("spdx", "cyclonedx"):
        sys.exit(__doc__)
    problems = spdx(sys.argv[2]) if sys.argv[1] == "spdx" else cyclonedx(sys.argv[2])
    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
