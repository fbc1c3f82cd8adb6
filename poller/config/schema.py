"""The JSON Schema of the config file, exported from the pydantic models (STYLE "Config").

``python -m poller.config.schema`` writes ``config/schema.json``, which editors use to complete and check
mapping files; ``python -m poller.config.schema --check`` exits 1 when that file is stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from poller.config.models import Config

SCHEMA_PATH = "config/schema.json"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"  # the dialect pydantic generates


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of a poller config file (SPEC section 4)."""
    schema = Config.model_json_schema()
    schema["$schema"] = SCHEMA_DIALECT
    schema["title"] = "poller configuration"
    schema["description"] = (
        "Connections, functions, on-failure destinations and event source mappings of the poller service."
    )
    return schema


def render_schema() -> str:
    """The checked-in text of the schema: pretty-printed, keys sorted, one trailing newline."""
    return json.dumps(config_json_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the schema file, or with ``--check`` return 1 if it is missing or stale."""
    parser = argparse.ArgumentParser(
        prog="python -m poller.config.schema", description="Export the config JSON Schema."
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is not current")
    parser.add_argument("--path", default=SCHEMA_PATH, help=f"schema file (default {SCHEMA_PATH})")
    args = parser.parse_args(argv)
    path = Path(args.path)
    expected = render_schema()
    if args.check:
        try:
            current = path.read_text(encoding="utf-8")
        except OSError as exc:
            print(f"{path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
            return 1
        if current != expected:
            print(f"{path} is stale: run python -m poller.config.schema", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(expected, encoding="utf-8", newline="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
