"""Monthly storage cost estimates from a dated table of list prices.

Prices are public list prices for the first pricing tier in a US region, per GB-month of stored
data and per 1,000 requests, as published on the providers' pricing pages when this table was
last updated. They change: the date is printed with every estimate.
"""

from __future__ import annotations

PRICES_AS_OF = "2025-06-01"
GB = 1024**3

# provider -> (label, $ per GB-month, $ per 1,000 PUT-class requests, $ per 1,000 GET-class requests)
PRICES: dict[str, tuple[str, float, float, float]] = {
    "aws": ("AWS S3 Standard (us-east-1)", 0.023, 0.005, 0.0004),
    "gcp": ("GCS Standard (us-east1)", 0.020, 0.005, 0.0004),
    "azure": ("Azure Blob Hot LRS (East US)", 0.0184, 0.0065, 0.0005),
}


NO_PRICE = "no provider price for a local directory"


def monthly_storage_cost(stored_bytes: int, where: str | None = None,
                         requests: tuple[int, int] | None = None) -> dict[str, dict]:
    """Estimated monthly cost of keeping `stored_bytes` with each provider; none when `where` (the
    URL of the storage being priced) is a directory (file://): no cloud price applies there.
    `where` None (no remote configured yet) gives every provider's price, as what it would cost.

    With `requests` (PUT/LIST-class, GET/HEAD-class requests in a month), `usd_per_month` includes
    their price too, and the two parts are given apart (issue 17: with a small repository, requests
    are a large part of the bill)."""
    if where is not None and is_directory(where):
        return {}
    rows = {}
    for provider, (label, per_gb, per_1k_put, per_1k_get) in PRICES.items():
        storage = stored_bytes / GB * per_gb
        row = {"label": label, "usd_per_month": round(storage, 4), "usd_per_gb_month": per_gb,
               "prices_as_of": PRICES_AS_OF}
        if requests is not None:
            puts, gets = requests
            request_cost = puts / 1000 * per_1k_put + gets / 1000 * per_1k_get
            row.update(usd_per_month=round(storage + request_cost, 4), storage_usd_per_month=round(storage, 4),
                       requests_usd_per_month=round(request_cost, 4), put_requests_per_month=puts,
                       get_requests_per_month=gets)
        rows[provider] = row
    return rows


def request_classes(counts: dict[str, int]) -> tuple[int, int]:
    """(PUT/LIST-class, GET/HEAD-class) requests from counts by remote method (deletes are free)."""
    return counts.get("put", 0) + counts.get("list", 0), counts.get("get", 0) + counts.get("stat", 0)



def is_directory(url: str) -> bool:
    """A file:// URL or a plain path: storage no provider bills."""
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    return scheme == "file"


def priced_location(location: str, is_local: bool, configured_remote: str | None) -> str | None:
    """What a repository's storage cost depends on: a remote's own URL; for the local repository,
    where its off-site copy goes (the configured remote), or None (no remote: every provider)."""
    return configured_remote if is_local else location
