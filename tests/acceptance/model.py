"""An independent model of the catalog rules, written from the documentation, not the
code: which CSV rows are offers, how GPU names map, how interruption rates join, how
offers sort and filter, and how placement scores. Tests compare Terraform's outputs
with it."""

import csv
import json
import pathlib
import tomllib

# The Spot Instance Advisor's buckets (its `ranges`), and the documented midpoints used
# as the expected rate in the score; `>20%` is 20–100.
ADVISOR_LABELS = ["<5%", "5-10%", "10-15%", "15-20%", ">20%"]
RATE_RANGES = {"<5%": (0, 5), "5-10%": (5, 10), "10-15%": (10, 15), "15-20%": (15, 20), ">20%": (20, 100)}

GPU_ALIASES = {
    "nvidia-tesla-a100": "A100",
    "nvidia-a100-80gb": "A100-80GB",
    "nvidia-h100-80gb": "H100",
    "nvidia-h200-141gb": "H200",
    "nvidia-l4": "L4",
}
CANONICAL = ["A100", "A100-80GB", "H100", "H200", "L4", "T4", "V100", "A10G", "A10", "K80", "M60"]


def canonical_gpu(name: str) -> str:
    if name.lower() in GPU_ALIASES:
        return GPU_ALIASES[name.lower()]
    for c in CANONICAL:
        if c.lower() == name.lower():
            return c
    return name


def load(directory: pathlib.Path) -> list[dict]:
    manifest = tomllib.loads((directory / "manifest.toml").read_text())
    rates = {}
    for feed in manifest.get("interruption", []):
        data = json.loads((directory / feed["file"]).read_text())
        label = f"{feed['source']}, {feed['observed_at'][:10]}"
        for region, systems in data["spot_advisor"].items():
            for instance_type, entry in systems.get("Linux", {}).items():
                rates[(feed["cloud"], region, instance_type)] = (ADVISOR_LABELS[entry["r"]], label)
    offers = []
    for entry in manifest["files"]:
        with open(directory / entry["file"], newline="") as f:
            for row in csv.DictReader(f):
                if not row["SpotPrice"].strip():
                    continue
                gpu = row["AcceleratorName"].strip()
                cloud = entry["cloud"]
                rate, rate_source = rates.get((cloud, row["Region"], row["InstanceType"]), ("unknown", ""))
                offers.append(
                    {
                        "cloud": cloud,
                        "provider": cloud,
                        "region": row["Region"],
                        "zone": row.get("AvailabilityZone", "") or "",
                        "instance_type": row["InstanceType"],
                        "vcpus": float(row["vCPUs"]),
                        "memory_gib": float(row["MemoryGiB"]),
                        "gpu_name": canonical_gpu(gpu) if gpu else "",
                        "gpu_name_original": gpu,
                        "gpu_count": round(float(row["AcceleratorCount"])) if gpu else 0,
                        "on_demand_price": float(row["Price"]) if row["Price"].strip() else None,
                        "spot_price": float(row["SpotPrice"]),
                        "interruption_rate": rate,
                        "interruption_rate_source": rate_source,
                        "observed_at": entry["observed_at"],
                        "source": "snapshot",
                    }
                )
    offers.sort(key=sort_key)
    return offers


def sort_key(o: dict):
    return (o["spot_price"], o["cloud"], o["region"], o["zone"], o["instance_type"])


def matches(o: dict, clouds=None, regions=None, instance_types=None, min_vcpus=None,
            min_memory_gib=None, gpu_name=None, min_gpus=None, max_spot_price=None,
            exclude_regions=None, max_interruption_rate=None, allow_unknown_interruption_rate=False,
            providers=None) -> bool:
    clouds = clouds or providers
    if clouds and o["cloud"] not in clouds:
        return False
    if max_interruption_rate is not None:
        if o["interruption_rate"] == "unknown":
            if not allow_unknown_interruption_rate:
                return False
        elif RATE_RANGES[o["interruption_rate"]][1] > max_interruption_rate:
            return False
    if regions and o["region"] not in regions:
        return False
    if exclude_regions and o["region"] in exclude_regions:
        return False
    if instance_types and o["instance_type"] not in instance_types:
        return False
    if min_vcpus is not None and o["vcpus"] < min_vcpus:
        return False
    if min_memory_gib is not None and o["memory_gib"] < min_memory_gib:
        return False
    if gpu_name is not None:
        wanted = gpu_name.lower()
        names = {o["gpu_name"].lower(), o["gpu_name_original"].lower()}
        if o["gpu_count"] < max(1, min_gpus or 0) or (
            wanted not in names and canonical_gpu(gpu_name).lower() not in names
        ):
            return False
    elif min_gpus and o["gpu_count"] < min_gpus:
        return False
    if max_spot_price is not None and o["spot_price"] > max_spot_price:
        return False
    return True


def listing(offers, limit=100, **filters):
    return [o for o in offers if matches(o, **filters)][:limit]


def placement(offers, alternatives=5, preferred_regions=(), bonus=0.10,
              unknown_rate_percent=10.0, **filters):
    """Documented score: spot × (1 + expected rate/100) × (1 − bonus if preferred), the
    expected rate being the midpoint of the published range (unknown: 10 %); ties by
    catalog order."""
    scored = []
    for position, o in enumerate(offers):
        if not matches(o, **filters):
            continue
        if o["interruption_rate"] == "unknown":
            rate = unknown_rate_percent
        else:
            low, high = RATE_RANGES[o["interruption_rate"]]
            rate = (low + high) / 2
        score = o["spot_price"] * (1 + rate / 100)
        if o["region"] in preferred_regions:
            score *= 1 - bonus
        scored.append((score, position, o))
    scored.sort(key=lambda t: (t[0], t[1]))
    return [o for _, _, o in scored[: alternatives + 1]]


OFFER_FIELDS = ["cloud", "provider", "region", "zone", "instance_type", "vcpus", "memory_gib", "gpu_name",
                "gpu_count", "on_demand_price", "spot_price", "interruption_rate", "interruption_rate_source",
                "observed_at", "source"]


def as_output(o: dict) -> dict:
    """The object Terraform returns for an offer in computearbitrage_spot_prices."""
    return {k: o[k] for k in OFFER_FIELDS}
