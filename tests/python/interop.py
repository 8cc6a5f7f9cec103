"""Clients nobody here wrote, on both sides of Weir (tests/tests/interop.rs runs this).

  interop.py produce BOOTSTRAP TOPIC EVENTS SEED [REGISTRY_URL]
      Produces EVENTS click events with confluent-kafka, each value Avro in the Confluent
      wire format: with the registry's AvroSerializer when REGISTRY_URL is given (it
      registers the schema under TOPIC-value), else framed here with fastavro and schema id 1.
      Prints, as one JSON line, the aggregates computed here, independently of Weir:
      {"user|window_start": [events, total], ...}, and the schema id used.
  interop.py consume BOOTSTRAP TOPIC SCHEMA_FILE
      Reads TOPIC from the beginning to its end with a confluent-kafka consumer, checks each
      value's Confluent frame, decodes it with fastavro against SCHEMA_FILE and prints the
      last value per key and window in the same JSON form, with the record count.
"""

import io
import json
import random
import struct
import sys
import time

import fastavro
from confluent_kafka import Consumer, Producer, TopicPartition

CLICK = {
    "type": "record",
    "name": "Click",
    "namespace": "weir.test",
    "fields": [
        {"name": "user", "type": "string"},
        {"name": "amount", "type": "long"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}
T0 = 1_700_000_000_000
WINDOW = 10_000


def produce(bootstrap, topic, events, seed, registry=None):
    rng = random.Random(seed)
    parsed = fastavro.parse_schema(CLICK)
    if registry:
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroSerializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        client = SchemaRegistryClient({"url": registry})
        serializer = AvroSerializer(client, json.dumps(CLICK))
        ctx = SerializationContext(topic, MessageField.VALUE)

        def encode(record):
            return serializer(record, ctx)
    else:

        def encode(record):
            buf = io.BytesIO()
            buf.write(struct.pack(">bI", 0, 1))
            fastavro.schemaless_writer(buf, parsed, record)
            return buf.getvalue()

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    expected = {}
    schema_id = None
    for i in range(events):
        user = "py%02d" % rng.randrange(20)
        # Out of order by up to 2 s (the pipeline allows 3 s).
        ts = T0 + i * 5 - rng.randrange(2000)
        amount = 1 + rng.randrange(100)
        value = encode({"user": user, "amount": amount, "ts": ts})
        schema_id = struct.unpack(">I", value[1:5])[0]
        start = ts - ts % WINDOW
        e = expected.setdefault("%s|%d" % (user, start), [0, 0])
        e[0] += 1
        e[1] += amount
        while True:
            try:
                p.produce(topic, key=user.encode(), value=value, timestamp=ts)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    # A sentinel far ahead closes every window.
    end = T0 + events * 5 + 60_000
    for part in range(4):
        p.produce(
            topic,
            key=b"zz",
            value=encode({"user": "zz-sentinel", "amount": 0, "ts": end}),
            partition=part,
            timestamp=end,
        )
    left = p.flush(60)
    if left:
        sys.exit("%d records not delivered" % left)
    print(json.dumps({"expected": expected, "schema_id": schema_id}))


def consume(bootstrap, topic, schema_file):
    with open(schema_file) as f:
        schema = fastavro.parse_schema(json.load(f))
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "interop-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    md = c.list_topics(topic, timeout=10)
    parts = sorted(md.topics[topic].partitions)
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    nxt = {p: 0 for p in parts}
    last = {}
    count = 0
    deadline = time.time() + 120
    while any(nxt[p] < ends[p] for p in parts):
        if time.time() > deadline:
            sys.exit("reading %s: stuck at %s, ends %s" % (topic, nxt, ends))
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            print("reader:", m.error(), file=sys.stderr)
            continue
        nxt[m.partition()] = m.offset() + 1
        v = m.value()
        if v[0] != 0:
            sys.exit("magic byte %d at %s/%d" % (v[0], m.partition(), m.offset()))
        rec = fastavro.schemaless_reader(io.BytesIO(v[5:]), schema)
        count += 1
        if rec["user"].startswith("zz-"):
            continue
        start = rec["window_start"]
        if hasattr(start, "timestamp"):  # fastavro decodes timestamp-millis to datetime
            start = int(round(start.timestamp() * 1000))
        last["%s|%d" % (rec["user"], start)] = [rec["events"], rec["total"]]
    c.close()
    print(json.dumps({"results": last, "records": count}))


def main():
    mode = sys.argv[1]
    if mode == "produce":
        reg = sys.argv[6] if len(sys.argv) > 6 else None
        produce(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), reg)
    elif mode == "consume":
        consume(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
