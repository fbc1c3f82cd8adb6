"""The handler of the operations tests: writes a line per record to the file in ``OPS_LOG`` (the
function's environment), with when it was handled, then sleeps ``OPS_SLEEP`` seconds if set; so a
test can see which mapping handled what, and when, wherever the handler runs."""

from __future__ import annotations

import json
import os
import time
from typing import Any


def record(event: dict[str, Any], context: Any) -> None:
    now = time.time()
    with open(os.environ["OPS_LOG"], "a") as log:
        for records in event["records"].values():
            for entry in records:
                log.write(json.dumps([entry["topic"], entry["partition"], entry["offset"], now]) + "\n")
    time.sleep(float(os.environ.get("OPS_SLEEP", "0")))
