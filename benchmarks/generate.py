"""Deterministic benchmark data shaped like the seed's data folder.

    python benchmarks/generate.py DEST [--scale 1.0] [--seed 1]

At scale 1.0 (about 1 GB):

- about 2,000 JSON files of 1-200 KB in ai_hub/, total_market_intelligence/, notification_ai/,
  ai_learning_data/, discovered_gems/ and universal_market_analysis/ (nested records with numbers,
  timestamps, identifiers and text; some indented, some compact);
- ten JSON files of 20-100 MB: record lists, some one record per line (JSONL), some indented,
  some compact arrays;
- four 50 MB binary arrays: two incompressible (random bytes), two partly compressible (float32
  series whose high bytes vary slowly).

The same seed and scale always give the same bytes. Speed comes from formatting records with
%-templates built once per record kind from `json.dumps` of a sample (so the output is real,
valid JSON) instead of calling `json.dumps` per record.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time

KB, MB = 1000, 1000 * 1000

TOP_DIRS = ("ai_hub", "total_market_intelligence", "notification_ai", "ai_learning_data", "discovered_gems",
            "universal_market_analysis")

_WORDS_TEXT = (
    "market momentum signal volatility breakout support resistance liquidity whale accumulation "
    "distribution sentiment bullish bearish neutral divergence correlation arbitrage spread funding "
    "rate open interest volume profile order book depth imbalance trend reversal consolidation range "
    "model agent insight prediction confidence feature gradient epoch training validation overfitting "
    "ensemble transformer embedding attention layer weight bias inference latency throughput cache "
    "notification alert priority channel delivery campaign engagement retention churn cohort segment "
    "token project community roadmap audit contract holders supply emission staking yield protocol "
    "chain bridge exchange listing partnership announcement upgrade governance proposal treasury risk "
    "exposure hedge portfolio allocation rebalance drawdown sharpe sortino alpha beta gamma delta theta "
    "the a of and to in for on with by from at as is was are be this that which high low strong weak "
    "early late short long term mid cap small large new old rising falling stable sudden gradual"
)
WORDS = _WORDS_TEXT.split()
SYMBOLS = [f"{base}-{quote}" for base in ("BTC", "ETH", "SOL", "ADA", "DOT", "AVAX", "MATIC", "LINK", "ATOM", "XRP",
                                          "DOGE", "LTC", "UNI", "AAVE", "NEAR", "ARB", "OP", "APT", "SUI", "INJ",
                                          "AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "GOOG", "META", "SPY", "QQQ", "GLD")
           for quote in ("USD", "USDT", "EUR")]
EXCHANGES = ["binance", "coinbase", "kraken", "bitstamp", "okx", "bybit", "nasdaq", "nyse", "lse", "xetra"]
SIGNALS = ["strong_buy", "buy", "hold", "sell", "strong_sell"]
AGENTS = [f"agent_{name}" for name in ("alpha", "beta", "gamma", "delta", "sigma", "omega", "nova", "orion",
                                       "atlas", "hermes", "athena", "apollo")]
MODELS = ["gpt-4o", "claude-3-opus", "llama-3-70b", "mixtral-8x22b", "gemini-1.5-pro", "local-lstm-v7"]
CHANNELS = ["email", "push", "sms", "telegram", "discord", "webhook", "slack"]
PRIORITIES = ["low", "normal", "high", "critical"]
HORIZONS = ["1h", "4h", "1d", "1w", "1m"]
RISKS = ["low", "medium", "high", "extreme"]
LABELS = ["up", "down", "flat", "spike", "crash", "recovery"]
FLAGS = ["honeypot_check_passed", "liquidity_locked", "mint_disabled", "owner_renounced", "high_tax",
         "low_holders", "new_contract", "verified_source", "whale_concentration", "audit_pending"]


# -- record templates ------------------------------------------------------------------------

class _Sample:
    """Builds a sample record whose values are sentinels, remembering each sentinel's format."""

    def __init__(self) -> None:
        self.formats: list[str] = []

    def _next(self, fmt: str) -> str:
        self.formats.append(fmt)
        return f"@@{len(self.formats) - 1}@@"

    def f(self, decimals: int = 4) -> str:
        return self._next(f"%.{decimals}f")

    def i(self) -> str:
        return self._next("%d")

    def s(self) -> str:
        return self._next('"%s"')

    def b(self) -> str:
        return self._next("%s")


def _template(sample: dict, indent: int | None, prefix: str = "") -> str:
    text = json.dumps(sample, indent=indent, separators=(", ", ": ") if indent is None else None)
    text = text.replace("%", "%%")
    text = re.sub(r'"@@\d+@@"', lambda m: "\x00", text)
    if prefix:
        text = "\n".join(prefix + line for line in text.split("\n"))
    return text


class RecordKind:
    """A record shape: a sample (for the templates) and a fast function making one record's values."""

    def __init__(self, name: str, build, values) -> None:
        self.name = name
        sample = _Sample()
        shape = build(sample)
        self.formats = sample.formats
        self._shape = shape
        self.values = values
        self.compact = self._fill(_template(shape, None))
        self.indented = self._fill(_template(shape, 2, "  "))
        self.indented_top = self._fill(_template(shape, 2))

    def _fill(self, skeleton: str) -> str:
        parts = skeleton.split("\x00")
        assert len(parts) == len(self.formats) + 1, self.name
        out = [parts[0]]
        for fmt, part in zip(self.formats, parts[1:], strict=True):
            out += [fmt, part]
        return "".join(out)


class Values:
    """Seeded value sources shared by the record kinds (cheap per call)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.random = rng.random
        self.randrange = rng.randrange
        self.choice = rng.choice
        self.sentences = [" ".join(rng.choices(WORDS, k=rng.randint(6, 22))) for _ in range(4000)]
        self.titles = [" ".join(rng.choices(WORDS, k=rng.randint(3, 7))).capitalize() for _ in range(1000)]
        self.base_ts = 1_704_067_200  # 2024-01-01T00:00:00Z

    def ts(self) -> str:
        t = self.base_ts + self.randrange(0, 366 * 86400)
        day, rest = divmod(t - self.base_ts, 86400)
        month, mday = divmod(day, 31)
        return (f"2024-{month % 12 + 1:02d}-{mday % 28 + 1:02d}T{rest // 3600:02d}:{rest // 60 % 60:02d}:"
                f"{rest % 60:02d}.{self.randrange(1000):03d}Z")

    def hexid(self) -> str:
        return f"{self.rng.getrandbits(64):016x}"

    def text(self) -> str:
        return self.choice(self.sentences)


def _market(s: _Sample) -> dict:
    return {"symbol": s.s(), "exchange": s.s(), "timestamp": s.s(), "price": s.f(), "open": s.f(), "high": s.f(),
            "low": s.f(), "close": s.f(), "volume": s.f(2), "change_pct": s.f(3),
            "indicators": {"rsi_14": s.f(2), "macd": s.f(), "macd_signal": s.f(),
                           "bollinger": {"upper": s.f(), "mid": s.f(), "lower": s.f()}, "sma_50": s.f(),
                           "ema_20": s.f()},
            "signal": s.s(), "confidence": s.f(3), "sources": [s.s(), s.s()], "analyst_note": s.s()}


def _market_values(v: Values) -> tuple:
    r = v.random
    p = 10 ** (r() * 4) + 0.5
    return (v.choice(SYMBOLS), v.choice(EXCHANGES), v.ts(), p, p * (1 + (r() - 0.5) * 0.02),
            p * (1 + r() * 0.03), p * (1 - r() * 0.03), p * (1 + (r() - 0.5) * 0.02), r() * 1e6, (r() - 0.5) * 20,
            r() * 100, (r() - 0.5) * p * 0.01, (r() - 0.5) * p * 0.01, p * 1.04, p, p * 0.96, p * (1 + r() * 0.01),
            p * (1 - r() * 0.01), v.choice(SIGNALS), r(), v.choice(EXCHANGES), v.choice(AGENTS), v.text())


def _insight(s: _Sample) -> dict:
    return {"id": s.s(), "agent": s.s(), "created_at": s.s(), "model": s.s(), "prompt_tokens": s.i(),
            "completion_tokens": s.i(), "title": s.s(), "insight": s.s(), "score": s.f(3),
            "tags": [s.s(), s.s(), s.s()],
            "context": {"market": s.s(), "horizon": s.s(), "risk": s.s(),
                        "weights": [s.f(3), s.f(3), s.f(3), s.f(3)]},
            "accepted": s.b()}


def _insight_values(v: Values) -> tuple:
    r, c = v.random, v.choice
    return (v.hexid(), c(AGENTS), v.ts(), c(MODELS), v.randrange(50, 4000), v.randrange(20, 2000), c(v.titles),
            v.text() + " " + v.text(), r(), c(WORDS), c(WORDS), c(WORDS), c(SYMBOLS), c(HORIZONS), c(RISKS),
            r(), r(), r(), r(), "true" if r() < 0.7 else "false")


def _notification(s: _Sample) -> dict:
    return {"notification_id": s.i(), "user_id": s.i(), "channel": s.s(), "priority": s.s(), "title": s.s(),
            "body": s.s(), "sent_at": s.s(), "delivered": s.b(), "opened": s.b(),
            "metadata": {"campaign": s.s(), "ab_variant": s.s(), "latency_ms": s.i(), "retries": s.i()}}


def _notification_values(v: Values) -> tuple:
    r, c = v.random, v.choice
    return (v.randrange(10**9), v.randrange(10**6), c(CHANNELS), c(PRIORITIES), c(v.titles), v.text(), v.ts(),
            "true" if r() < 0.95 else "false", "true" if r() < 0.4 else "false", f"camp_{v.randrange(300):04d}",
            c("ABCD"), v.randrange(5, 3000), v.randrange(4))


def _learning(s: _Sample) -> dict:
    return {"sample_id": s.i(), "session": s.s(), "features": [s.f(4) for _ in range(12)], "label": s.s(),
            "prediction": s.s(), "loss": s.f(6), "epoch": s.i(), "gradient_norm": s.f(5), "feedback": s.s()}


def _learning_values(v: Values) -> tuple:
    r, c = v.random, v.choice
    return (v.randrange(10**8), v.hexid(), r(), r(), r(), r(), r(), r(), (r() - 0.5) * 4, (r() - 0.5) * 4, r(), r(),
            r() * 10, r() * 100, c(LABELS), c(LABELS), r() * 2, v.randrange(200), r() * 5, v.text())


def _gem(s: _Sample) -> dict:
    return {"token": s.s(), "name": s.s(), "chain": s.s(), "discovered_at": s.s(), "market_cap": s.f(2),
            "liquidity": s.f(2), "holders": s.i(), "score": s.f(2), "risk_flags": [s.s(), s.s()],
            "social": {"twitter_followers": s.i(), "telegram_members": s.i(), "sentiment": s.f(3)},
            "notes": s.s()}


def _gem_values(v: Values) -> tuple:
    r, c = v.random, v.choice
    return ("0x" + v.hexid() + v.hexid() + v.hexid()[:8], c(WORDS).capitalize() + c(WORDS).capitalize(),
            c(["ethereum", "solana", "base", "arbitrum", "bsc", "polygon"]), v.ts(), r() * 1e8, r() * 1e6,
            v.randrange(50, 200000), r() * 100, c(FLAGS), c(FLAGS), v.randrange(10**6), v.randrange(10**5),
            r() * 2 - 1, v.text())


KINDS = {
    "market": RecordKind("market", _market, _market_values),
    "insight": RecordKind("insight", _insight, _insight_values),
    "notification": RecordKind("notification", _notification, _notification_values),
    "learning": RecordKind("learning", _learning, _learning_values),
    "gem": RecordKind("gem", _gem, _gem_values),
}
DIR_KINDS = {"ai_hub": "insight", "total_market_intelligence": "market", "notification_ai": "notification",
             "ai_learning_data": "learning", "discovered_gems": "gem", "universal_market_analysis": "market"}
SUBDIRS = {"ai_hub": ["agents", "insights", "consensus"],
           "total_market_intelligence": ["binance", "coinbase", "kraken", "nasdaq", "daily"],
           "notification_ai": ["queue", "history", "templates"],
           "ai_learning_data": ["sessions", "evaluations", "feedback"],
           "discovered_gems": ["2024-01", "2024-02", "2024-03", "2024-04", "2024-05", "2024-06"],
           "universal_market_analysis": ["reports", "sectors", "correlations"]}


# -- writers ---------------------------------------------------------------------------------

def records_text(kind: RecordKind, v: Values, target_bytes: int, style: str) -> str:
    """Records of `kind` totalling about `target_bytes`: style 'jsonl', 'array' or 'indented'."""
    template = {"jsonl": kind.compact, "array": kind.compact, "indented": kind.indented}[style]
    values = kind.values
    estimate = len(template % values(v)) + 2
    count = max(1, target_bytes // estimate)
    body = [template % values(v) for _ in range(count)]
    if style == "jsonl":
        return "\n".join(body) + "\n"
    if style == "array":
        return "[" + ",\n".join(body) + "]\n"
    return "[\n" + ",\n".join(body) + "\n]\n"


def small_document(kind_name: str, module: str, v: Values, target_bytes: int, indented: bool) -> str:
    """One small JSON file: a header object, a summary and a list of records."""
    kind = KINDS[kind_name]
    header = {"module": module, "schema_version": f"2.{v.randrange(10)}", "generated_at": v.ts(),
              "generator": v.choice(AGENTS), "record_kind": kind_name,
              "summary": {"count": 0, "mean_score": round(v.random(), 4), "window": v.choice(HORIZONS),
                          "status": v.choice(["ok", "partial", "stale"])}}
    template = kind.indented if indented else kind.compact
    records = []
    size = 300
    while size < target_bytes or not records:
        text = template % kind.values(v)
        records.append(text)
        size += len(text) + 2
    header["summary"]["count"] = len(records)
    head = json.dumps(header, indent=2 if indented else None)[:-1].rstrip()
    if indented:
        return head + ',\n  "records": [\n' + ",\n".join("  " + r.replace("\n", "\n  ") for r in records) + "\n  ]\n}\n"
    return head + ', "records": [' + ", ".join(records) + "]}"


def small_size(rng: random.Random) -> int:
    """1-200 KB, skewed towards small files like a real folder of JSON state."""
    return int(KB * 200 ** (rng.random() ** 0.6))


LARGE_FILES = [  # (path, kind, style, MB at scale 1.0)
    ("total_market_intelligence/tick_history.jsonl", "market", "jsonl", 100),
    ("universal_market_analysis/full_market_snapshot.json", "market", "indented", 100),
    ("ai_learning_data/training_corpus.jsonl", "learning", "jsonl", 95),
    ("ai_hub/collective_memory.json", "insight", "array", 85),
    ("notification_ai/delivery_log.jsonl", "notification", "jsonl", 75),
    ("discovered_gems/gem_archive.json", "gem", "indented", 65),
    ("ai_learning_data/evaluation_runs.json", "learning", "array", 55),
    ("ai_hub/agent_conversations.jsonl", "insight", "jsonl", 45),
    ("universal_market_analysis/sector_rotation.json", "market", "array", 30),
    ("notification_ai/templates_rendered.json", "notification", "indented", 20),
]
BINARY_FILES = [  # (path, kind, MB at scale 1.0)
    ("ai_learning_data/model_weights.bin", "random", 50),
    ("ai_hub/vector_index.bin", "random", 50),
    ("total_market_intelligence/price_matrix.f32", "series", 50),
    ("ai_learning_data/embeddings.f32", "series", 50),
]


_THIRD_BYTE = bytes((b & 0x0F) | 0x40 for b in range(256))


def binary_bytes(rng: random.Random, size: int, kind: str) -> bytes:
    if kind == "random":
        return rng.randbytes(size)
    # float32 little-endian series: random mantissa bytes, slowly varying exponent/sign byte pairs
    size -= size % 4
    noise = rng.randbytes(size // 2)
    out = bytearray(size)
    out[0::4] = noise[0::2]
    out[1::4] = noise[1::2]
    steps = size // 4
    high = bytearray()
    level = 0x3F
    while len(high) < steps:
        run = rng.randrange(64, 4096)
        high += bytes((level,)) * run
        level = max(0x38, min(0x46, level + rng.choice((-1, 1))))
    out[3::4] = high[:steps]
    out[2::4] = noise[1:size // 2:2].translate(_THIRD_BYTE)  # 4 random bits of 8
    return bytes(out)


def write_file(path: str, data: str | bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def small_file_path(rng: random.Random, top: str, index: int) -> str:
    sub = rng.choice(SUBDIRS[top])
    stem = {"ai_hub": "insight", "total_market_intelligence": "scan", "notification_ai": "batch",
            "ai_learning_data": "session", "discovered_gems": "gem", "universal_market_analysis": "report"}[top]
    return f"{top}/{sub}/{stem}_{index:05d}.json"


def generate(dest: str, scale: float = 1.0, seed: int = 1, log=print) -> dict:
    """Write the data folder into `dest` (must not exist or be empty); return counts and bytes."""
    os.makedirs(dest, exist_ok=True)
    if os.listdir(dest):
        raise SystemExit(f"{dest} is not empty")
    rng = random.Random(seed)
    v = Values(random.Random(seed + 1))
    started = time.perf_counter()
    total, files = 0, 0
    # the seed's own well-known files
    for top in TOP_DIRS:
        name = {"ai_hub": "collective_intelligence", "total_market_intelligence": "market_overview",
                "notification_ai": "notification_state", "ai_learning_data": "learning_state",
                "discovered_gems": "gems_index", "universal_market_analysis": "analysis_state"}[top]
        text = small_document(DIR_KINDS[top], top, v, 150 * KB, indented=True)
        write_file(os.path.join(dest, top, f"{name}.json"), text)
        total, files = total + len(text), files + 1
    count = max(12, round(2000 * scale))
    for index in range(count):
        top = TOP_DIRS[index % len(TOP_DIRS)]
        text = small_document(DIR_KINDS[top], top, v, small_size(rng), indented=rng.random() < 0.4)
        write_file(os.path.join(dest, small_file_path(rng, top, index)), text)
        total, files = total + len(text), files + 1
    log(f"  {files} small JSON files, {total / MB:.0f} MB, {time.perf_counter() - started:.1f} s")
    for path, kind, style, mb in LARGE_FILES:
        text = records_text(KINDS[kind], v, int(mb * MB * scale), style)
        write_file(os.path.join(dest, path), text)
        total, files = total + len(text), files + 1
    log(f"  + {len(LARGE_FILES)} large JSON files, {total / MB:.0f} MB, {time.perf_counter() - started:.1f} s")
    for path, kind, mb in BINARY_FILES:
        data = binary_bytes(rng, int(mb * MB * scale), kind)
        write_file(os.path.join(dest, path), data)
        total, files = total + len(data), files + 1
    seconds = time.perf_counter() - started
    log(f"  + {len(BINARY_FILES)} binary files: {files} files, {total / MB:.0f} MB in {seconds:.1f} s")
    return {"files": files, "bytes": total, "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", help="directory to create (must be empty)")
    parser.add_argument("--scale", type=float, default=1.0, help="size in GB (default 1.0)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    result = generate(args.dest, args.scale, args.seed)
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
