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


def monthly_storage_cost(stored_bytes: int) -> dict[str, dict]:
    """Estimated monthly cost of keeping `stored_bytes` with each provider."""
    return {
        provider: {"label": label, "usd_per_month": round(stored_bytes / GB * per_gb, 4),
                   "usd_per_gb_month": per_gb, "prices_as_of": PRICES_AS_OF}
        for provider, (label, per_gb, _, _) in PRICES.items()
    }

