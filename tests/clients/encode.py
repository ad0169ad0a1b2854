"""Encode the deliveries the tests send, with the real client libraries.

Prints one JSON object: case name -> {"headers": {...}, "body_base64": "..."}.
The CloudEvents come from the `cloudevents` SDK (binary and structured HTTP binding),
the Firestore event data from Google's `google-events` package, exactly as those
libraries write them. Run by tests/api/clients.rs in a venv with the pins of
tests/clients/requirements.txt.
"""

import base64
import json
import sys
from datetime import datetime, timezone

from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from google.events.cloud.firestore_v1.types import data as fs

DB = "projects/demo/databases/(default)/documents"


def message(m):
    return {"headers": dict(m.headers), "body_base64": base64.b64encode(m.body).decode()}


def ce(attrs, data):
    base = {"specversion": "1.0", "time": datetime(2026, 12, 3, 10, 0, tzinfo=timezone.utc)}
    base.update(attrs)
    return CloudEvent(attributes=base, data=data)


def order_doc(name, order_id, item, quantity, extra=None):
    fields = {
        "order_id": fs.Value(string_value=order_id),
        "item_id": fs.Value(string_value=item),
        "quantity": fs.Value(integer_value=quantity),
    }
    fields.update(extra or {})
    return fs.Document(name=f"{DB}/order_requests/{name}", fields=fields)


def firestore_event(ev_id, ty, data_bytes, content_type, subject):
    return ce(
        {
            "id": ev_id,
            "source": "//firestore.googleapis.com/projects/demo/databases/(default)",
            "type": ty,
            "subject": subject,
            "datacontenttype": content_type,
        },
        data_bytes,
    )


def main():
    item = sys.argv[1] if len(sys.argv) > 1 else "apple"
    fmt = JSONFormat()
    out = {}
    # Binary mode: attribute values with a space and non-ASCII are percent-encoded by the SDK.
    out["binary_order"] = message(
        ce_http.to_binary(
            ce(
                {
                    "id": "evt ce/1 ü",
                    "source": "/shop/eu west",
                    "type": "com.example.order.created",
                    "subject": "orders/o-ce-1 ünï",
                    "datacontenttype": "application/json",
                },
                {"order_id": "o-ce-1", "item_id": item, "quantity": 1},
            ),
            fmt,
        )
    )
    out["structured_order"] = message(
        ce_http.to_structured(
            ce(
                {
                    "id": "evt-ce-2",
                    "source": "/shop",
                    "type": "com.example.order.created",
                    "subject": "orders/o-ce-2",
                    "datacontenttype": "application/json",
                },
                {"order_id": "o-ce-2", "item_id": item, "quantity": 2},
            ),
            fmt,
        )
    )
    created = fs.DocumentEventData(value=order_doc("r-pb", "o-fs-pb", item, 3))
    written = fs.DocumentEventData(value=order_doc("r-json", "o-fs-json", item, 4))
    # A delete as Google's samples write it: `value` present but an empty Document.
    deleted = fs.DocumentEventData(
        value=fs.Document(), old_value=order_doc("r-del", "o-del", item, 1)
    )
    # An order the service refuses (quantity 0), carrying non-UTF-8 bytes: dead-lettered,
    # and its stored body must be exactly these bytes.
    bad = fs.DocumentEventData(
        value=order_doc(
            "r-bad", "o-fs-bad", item, 0, {"blob": fs.Value(bytes_value=b"\xff\xfe\x00\x80")}
        )
    )
    protobuf = ("application/protobuf", fs.DocumentEventData.serialize)
    as_json = ("application/json", lambda d: fs.DocumentEventData.to_json(d).encode())
    for case, ev_id, verb, (content_type, encode), doc, data in [
        ("firestore_protobuf_created", "evt-fs-1", "created", protobuf, "r-pb", created),
        ("firestore_json_written", "evt-fs-2", "written", as_json, "r-json", written),
        ("firestore_protobuf_deleted", "evt-fs-3", "written", protobuf, "r-del", deleted),
        ("firestore_json_deleted", "evt-fs-4", "written", as_json, "r-del", deleted),
        ("firestore_protobuf_invalid", "evt-fs-5", "created", protobuf, "r-bad", bad),
    ]:
        event = firestore_event(
            ev_id,
            f"google.cloud.firestore.document.v1.{verb}",
            encode(data),
            content_type,
            f"documents/order_requests/{doc}",
        )
        out[case] = message(ce_http.to_binary(event, fmt))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
