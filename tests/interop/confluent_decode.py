"""Reads records of a topic with Confluent's own Python client and decodes their values with its
AvroDeserializer, as any Confluent consumer would: the writer's schema is fetched from the registry
by the schema id in the record's wire-format header, and no reader schema is given.

Used by tests/interop_confluent.rs (run it with the interpreter of deploy/local/python-env):

    python confluent_decode.py --bootstrap 127.0.0.1:9092 --registry http://127.0.0.1:8081 \
        --topic NAME --count N [--timeout SECONDS]

Reads N records from the beginning of every partition of the topic with
isolation.level=read_committed and a throwaway group id (partitions are assigned, no group is
joined, nothing is committed), and prints one JSON object per record on stdout:

    {"partition": 0, "offset": 3, "key": "<utf-8 key>", "schema_id": 7, "value": {...}}

In "value", timestamps (fastavro's datetimes) are epoch milliseconds and bytes are hex. Exits 1 with
a message on stderr on a timeout, a consumer error or a record that does not decode.

The deserializer keeps the client's defaults on purpose. In confluent-kafka 2.16 its subject-name
strategy is ASSOCIATED: it asks the registry for the topic's associations (the AxonOps registry
answers 404, read as "none") and falls back to TopicNameStrategy. Without use.latest.version that
subject picks no schema, so records written under TopicRecordNameStrategy decode by schema id alone.
"""

import argparse
import datetime
import decimal
import json
import sys
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
ONE_MS = datetime.timedelta(milliseconds=1)


def fail(message):
    print(f"confluent_decode: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def plain(value):
    """The decoded value with datetimes as epoch millis and bytes as hex, so that it is JSON."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return (value - EPOCH) // ONE_MS
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, (decimal.Decimal, uuid.UUID, datetime.time)):
        return str(value)
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--registry", required=True, help="schema registry URL")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True, help="records to read")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for all of it")
    args = parser.parse_args()
    sys.stdout.reconfigure(encoding="utf-8")

    deadline = time.monotonic() + args.timeout
    registry = SchemaRegistryClient({"url": args.registry})
    deserializer = AvroDeserializer(registry)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"onceflow-interop-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(args.topic, timeout=max(1.0, deadline - time.monotonic()))
        topic = metadata.topics.get(args.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            fail(f"topic {args.topic} not found at {args.bootstrap}: {topic.error if topic else 'absent'}")
        consumer.assign(
            [TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in sorted(topic.partitions)]
        )

        got = 0
        while got < args.count:
            left = deadline - time.monotonic()
            if left <= 0:
                fail(
                    f"timed out after {args.timeout:g} s: read {got} of {args.count} records "
                    f"of {args.topic} (read_committed)"
                )
            msg = consumer.poll(min(left, 0.5))
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                fail(f"consumer error: {msg.error()}")
            where = f"{msg.topic()}/{msg.partition()}@{msg.offset()}"
            raw = msg.value()
            if raw is None or len(raw) < 5 or raw[0] != 0:
                fail(f"{where}: not in the Confluent wire format (magic byte 0, 4-byte schema id): {raw[:16]!r}")
            schema_id = int.from_bytes(raw[1:5], "big")
            try:
                value = deserializer(
                    raw, SerializationContext(msg.topic(), MessageField.VALUE, msg.headers())
                )
            except Exception as e:  # any failure of the client is the finding
                fail(f"{where}: schema id {schema_id} does not decode: {type(e).__name__}: {e}")
            key = msg.key()
            try:
                key = None if key is None else key.decode("utf-8")
            except UnicodeDecodeError:
                fail(f"{where}: key is not UTF-8: {key!r}")
            line = {
                "partition": msg.partition(),
                "offset": msg.offset(),
                "key": key,
                "schema_id": schema_id,
                "value": plain(value),
            }
            print(json.dumps(line, ensure_ascii=False, sort_keys=False), flush=True)
            got += 1
    finally:
        consumer.close()


if __name__ == "__main__":
    main()
