#!/usr/bin/env python3
"""Writes the inputs of the golden cases that need Avro bytes or many events, and the
expected output of `many_keys`, computed here independently of Weir (plain Python, its
own Avro encoder, its own grouping). Run from this folder: python3 generate.py"""
import base64, json, random, struct

def zigzag(n):
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)

def avro_string(s):
    b = s.encode()
    return zigzag(len(b)) + b

def wire(schema_id, body):
    return b"\x00" + struct.pack(">I", schema_id) + body

def rec(value_bytes, **kw):
    d = dict(kw)
    d["value_b64"] = base64.b64encode(value_bytes).decode()
    return json.dumps(d, separators=(",", ":"))

def write(path, lines):
    with open(path, "w") as f:
        for l in lines:
            f.write(l + "\n")

# --- invalid_avro: schema {user: string, n: long, ts: timestamp-millis}, id 1
def ev(user, n, ts):
    return avro_string(user) + zigzag(n) + zigzag(ts)

good1 = wire(1, ev("a", 1, 1000))
lines = [
    rec(good1),
    rec(wire(1, ev("a", 2, 2000))[:-1]),            # truncated: decode
    rec(b"\x01" + good1[1:]),                        # wrong magic byte: decode
    rec(wire(9, ev("b", 4, 3000))),                  # unknown schema id: schema
    rec(wire(1, ev("b", 8, 4000)) + b"\x00\x00"),     # trailing bytes: decode
    "this line is not JSON at all",                  # decode
    rec(wire(1, ev("b", 16, 5000))),
    rec(b""),                                        # empty: decode
]
write("invalid_avro/input.jsonl", lines)

# --- avro_raw: bare datums, event time from the record timestamp (the ts field is ignored)
lines = [
    rec(ev("a", 1, 0), timestamp=1000, partition=0),
    rec(ev("a", 2, 0), timestamp=4000, partition=0),
    rec(ev("b", 4, 0)[:-2], timestamp=5000, partition=0),   # truncated: decode
    rec(ev("b", 8, 0), partition=0),                          # no timestamp: schema
    rec(ev("b", 16, 0), timestamp=12000, partition=0),
]
write("avro_raw/input.jsonl", lines)

# --- schema_evolution: v1 {user, n:int, ts, legacy:string} id 1; v2 {user, n:long, ts, channel:string="web"} id 2
def v1(user, n, ts, legacy):
    return wire(1, avro_string(user) + zigzag(n) + zigzag(ts) + avro_string(legacy))
def v2(user, n, ts, channel):
    return wire(2, avro_string(user) + zigzag(n) + zigzag(ts) + avro_string(channel))
lines = [
    rec(v1("a", 1, 1000, "old")),
    rec(v2("b", 2, 2000, "app")),
    rec(v1("c", 4, 3000, "old")),
    rec(v2("d", 8, 4000, "web")),
    rec(v2("e", 16, 12000, "app")),
    rec(v1("f", 32, 13000, "x")),
]
write("schema_evolution/input.jsonl", lines)

# --- many_keys: 4 partitions, 300 keys, 6000 events, bounded disorder, no late events.
rnd = random.Random(42)
PARTS, KEYS, EVENTS = 4, 300, 6000
SIZE, GRACE, OOO = 5000, 1000, 3000
keys = [f"user-{i:03d}" for i in range(KEYS)]
part_of = {k: i % PARTS for i, k in enumerate(keys)}
clock = [0] * PARTS
offsets = [0] * PARTS
lines, events = [], []
for i in range(EVENTS):
    k = rnd.choice(keys)
    p = part_of[k]
    clock[p] += rnd.randint(0, 40)
    ts = max(0, clock[p] - rnd.randint(0, 2500))   # at most 2.5 s out of order < OOO
    n = rnd.randint(-5, 100)
    lines.append(json.dumps({"partition": p, "offset": offsets[p], "key": k,
                             "value": {"user": k, "n": n, "ts": ts}}, separators=(",", ":")))
    offsets[p] += 1
    events.append((p, k, n, ts))
write("many_keys/input.jsonl", lines)
# Each partition's windows close by that partition's watermark (its largest event time
# minus OOO), in (close, start, key) order, after the event that moves it; what is still open
# at the end closes by (close, partition, start, key).
agg, open_windows, rows = {}, {}, []
maxts = [None] * PARTS
for p, k, n, ts in events:
    start = ts // SIZE * SIZE
    a = agg.setdefault((p, start, k), [0, 0, None])
    a[0] += 1
    a[1] += n
    a[2] = n if a[2] is None else max(a[2], n)
    open_windows.setdefault(p, set()).add(start)
    maxts[p] = ts if maxts[p] is None else max(maxts[p], ts)
    wm = maxts[p] - OOO
    for s in sorted(s for s in open_windows[p] if s + SIZE + GRACE <= wm):
        open_windows[p].discard(s)
        rows += sorted(((q, st, key), v) for (q, st, key), v in agg.items() if q == p and st == s)
closed = {(q, st) for (q, st, _), _ in rows}
rest = [(key, v) for key, v in agg.items() if (key[0], key[1]) not in closed]
rows += sorted(rest, key=lambda kv: (kv[0][1] + SIZE + GRACE, kv[0][0], kv[0][1], kv[0][2]))
write("many_keys/expected.jsonl", [json.dumps(
    {"user": k, "window_start": s, "window_end": s + SIZE, "events": c, "total": t, "max_n": m},
    separators=(",", ":")) for (p, s, k), (c, t, m) in rows])

# --- complex_types: an Avro container file written by fastavro (pip install fastavro), an
# Avro implementation independent of Weir's. Skipped when fastavro is missing.
try:
    import datetime, decimal, uuid
    import fastavro
except ImportError:
    fastavro = None
if fastavro:
    schema = fastavro.parse_schema(json.load(open("complex_types/input.avsc")))
    base = 1767225600000000  # 2026-01-01T00:00:00Z in microseconds
    def order(i, name, tier, items, tags, amount, day, ts):
        return {"id": str(uuid.UUID(int=i)), "customer": {"name": name, "tier": tier},
                "items": [{"sku": s, "qty": q} for s, q in items], "tags": tags,
                "amount": decimal.Decimal(amount), "day": day, "checksum": b"abcd", "ts": ts, "note": None}
    orders = [
        order(1, "alice", "GOLD", [("a", 1), ("b", 2)], {"region": "eu"}, "12.50", datetime.date(2026, 1, 1), base),
        order(2, "bob", "SILVER", [("c", 5)], {"region": "us"}, "3.00", datetime.date(2026, 1, 2), base + 10_000_000),
        order(3, "carol", "GOLD", [], {"region": "us"}, "0.99", datetime.date(2025, 12, 31), base + 20_000_000),
        order(4, "dave", "GOLD", [("d", 1)], {}, "1.00", datetime.date(2026, 1, 1), base + 30_000_000),
        order(5, "erin", "SILVER", [("e", 1), ("f", 1), ("g", 1)], {"region": "eu"}, "7.25", datetime.date(2026, 1, 3), base + 70_000_000),
    ]
    with open("complex_types/input.avro", "wb") as f:
        fastavro.writer(f, schema, orders, sync_marker=b"weir-golden-sync")

# --- table_many: a running table (window type none) with a ttl, one partition, keys that
# go quiet and come back, disorder beyond the ttl (late first events). Expected from a
# model of the definition: each accepted event emits its key's running count and sum (emit:
# update, no interval); a key is dropped once the watermark (largest ts - OOO) reaches its
# largest ts + TTL, and a later event starts it from zero; a key's first event whose ts +
# TTL the watermark has reached is late.
rnd = random.Random(7)
TTL, OOO = 20000, 2000
keys = [f"u{i:02d}" for i in range(40)]
lines, out, dead = [], [], []
entries = {}              # key -> [count, total, expires_at]
wm = None
clock = 0
for i in range(3000):
    clock += rnd.randint(0, 120)
    # Most keys are active in some stretches only: they expire and come back.
    first = (clock // 10000) * 3 % 30
    k = rnd.choice(keys[first : first + 10])
    ts = clock - rnd.choice([0, 0, 0, rnd.randint(0, 1500), rnd.randint(0, 40000)])
    n = rnd.randint(-10, 100)
    lines.append(json.dumps({"user": k, "n": n, "ts": ts}, separators=(",", ":")))
    line = i + 1
    if k in entries:
        e = entries[k]
        e[0] += 1
        e[1] += n
        e[2] = max(e[2], ts + TTL)
        out.append({"user": k, "events": e[0], "total": e[1]})
    elif wm is not None and wm >= ts + TTL:
        dead.append({"line": line, "reason": "late"})
    else:
        entries[k] = [1, n, ts + TTL]
        out.append({"user": k, "events": 1, "total": n})
    wm = ts - OOO if wm is None else max(wm, ts - OOO)
    for key in [key for key, e in entries.items() if e[2] <= wm]:
        del entries[key]
write("table_many/input.jsonl", lines)
write("table_many/expected.jsonl", [json.dumps(o, separators=(",", ":")) for o in out])
write("table_many/expected-dead.jsonl", [json.dumps(d, separators=(",", ":")) for d in dead])
