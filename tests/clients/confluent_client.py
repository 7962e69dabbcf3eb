"""Drives a schema registry and reads a topic with Confluent's Python client.

Usage: confluent_client.py REGISTRY_URL BROKERS TOPIC COUNT

Exercises the registry's API through `SchemaRegistryClient` (register, lookup,
versions, compatibility, config, delete) on a subject of its own, then reads COUNT
records of TOPIC from the beginning with `AvroDeserializer` for key and value and
prints each as one JSON line `{"key": …, "value": …}`. Any failure exits non-zero with
the step that failed.
"""

import json
import sys
import time
import uuid

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def record(fields):
    return json.dumps({"type": "record", "name": "Probe", "fields": fields})


V1 = record([{"name": "id", "type": "long"}])
V2 = record([{"name": "id", "type": "long"}, {"name": "note", "type": ["null", "string"], "default": None}])
BREAKING = record([{"name": "id", "type": "string"}])


def check(what, got, want):
    if got != want:
        sys.exit(f"{what}: got {got!r}, want {want!r}")


def registry_api(client):
    subject = f"python-client-{uuid.uuid4().hex}-value"
    first = client.register_schema(subject, Schema(V1, "AVRO"))
    found = client.lookup_schema(subject, Schema(V1, "AVRO"))
    check("lookup: id", found.schema_id, first)
    check("lookup: version", found.version, 1)
    check("versions after one registration", client.get_versions(subject), [1])
    check("a compatible schema", client.test_compatibility(subject, Schema(V2, "AVRO")), True)
    check("a breaking schema", client.test_compatibility(subject, Schema(BREAKING, "AVRO")), False)
    client.register_schema(subject, Schema(V2, "AVRO"))
    check("latest version", client.get_latest_version(subject).version, 2)
    check("versions after two", client.get_versions(subject), [1, 2])
    client.set_compatibility(subject, "FULL")
    check("subject compatibility", client.get_compatibility(subject), "FULL")
    check("subject config", client.get_config(subject).compatibility_level.value, "FULL")
    check("delete", client.delete_subject(subject), [1, 2])
    check("deleted subject listed", subject in client.get_subjects(), False)
    check("deleted subject listed with deleted=True", subject in client.get_subjects(deleted=True), True)


def read_topic(client, brokers, topic, count):
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": f"python-client-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    deserialize = AvroDeserializer(client)
    read, deadline = 0, time.monotonic() + 90
    try:
        while read < count:
            if time.monotonic() > deadline:
                sys.exit(f"read {read} of {count} records of {topic} within 90 s")
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                sys.exit(f"consuming {topic}: {message.error()}")
            key = deserialize(message.key(), SerializationContext(topic, MessageField.KEY))
            value = deserialize(message.value(), SerializationContext(topic, MessageField.VALUE))
            print(json.dumps({"key": key, "value": value}, default=str), flush=True)
            read += 1
    finally:
        consumer.close()


def main():
    url, brokers, topic, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    client = SchemaRegistryClient({"url": url})
    registry_api(client)
    read_topic(client, brokers, topic, count)


if __name__ == "__main__":
    main()
