"""``poller status``: every mapping of a running poller as a table, read from its ``/mappings``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

COLUMNS = (
    "MAPPING",
    "STATE",
    "READY",
    "LAG",
    "POLLED",
    "SUCCEEDED",
    "FAILED",
    "DEAD-LETTERED",
    "FILTERED",
    "LAST ERROR",
)


class StatusError(Exception):
    """The poller could not be asked (not running there, refused the token, ...)."""


def fetch_mappings(url: str, token: str | None, timeout: float = 5.0) -> dict[str, Any]:
    """``GET <url>/mappings``, with the admin token if there is one."""
    request = urllib.request.Request(url.rstrip("/") + "/mappings")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            mappings: dict[str, Any] = json.loads(response.read())
            return mappings
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise StatusError(f"{url} wants the admin token: --token or POLLER_ADMIN_TOKEN") from exc
        raise StatusError(f"{url} answered {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise StatusError(f"cannot ask the poller at {url}: {getattr(exc, 'reason', exc)}") from exc


def render(mappings: dict[str, Any]) -> str:
    """The table: one row per mapping; lag is summed over partitions (``-`` where there is none)."""
    rows: list[tuple[str, ...]] = [COLUMNS]
    for name, mapping in sorted(mappings.items()):
        counts = mapping.get("counts", {})
        lags = {**mapping.get("lag", {}), **mapping.get("iteratorAgeMilliseconds", {})}
        lag = str(sum(lags.values())) if lags else "-"
        if mapping.get("iteratorAgeMilliseconds"):
            lag += " ms"
        rows.append(
            (
                name,
                str(mapping.get("state", "?")),
                "yes" if mapping.get("ready") else "no",
                lag,
                *(
                    str(counts.get(key, 0))
                    for key in ("polled", "succeeded", "failed", "dead_lettered", "filtered")
                ),
                (mapping.get("lastError") or "-").splitlines()[0][:80],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )
