//! Every decoder fuzzed with proptest, no database: deliveries, orders, Firestore events, keys.

use super::strategies::{
    body, hostile_string, json_value, order_json, protobuf_bytes, request_headers,
};
use super::{is_hex64, runner};
use firestore_once_core::delivery::{self, firestore_event, Payload, MAX_TRANSPORT_ID_BYTES};
use firestore_once_core::engine::key::{hashed_id, is_valid_document_id};
use firestore_once_core::engine::{Operation, ParseCtx};
use firestore_once_shop::order::{Order, MAX_LINES, MAX_QUANTITY};
use firestore_once_shop::ShopConfig;
use proptest::prelude::*;

/// The delivery decoder never panics, and what it hands on is bounded: no transport identity
/// longer than the cap, so no status document or dead letter can be inflated by one.
#[test]
fn delivery_decoder_never_panics_and_bounds_identities() {
    runner(2048)
        .run(&(request_headers(), body()), |(h, b)| {
            let d = delivery::decode(&h, &b);
            if let Some(id) = &d.meta.id {
                prop_assert!(id.len() <= MAX_TRANSPORT_ID_BYTES);
            }
            for v in d.meta.attrs.values() {
                prop_assert!(v.len() <= MAX_TRANSPORT_ID_BYTES);
            }
            if let Ok(Payload::Work {
                fallback_key: Some(k),
                ..
            }) = &d.payload
            {
                prop_assert!(k.len() <= MAX_TRANSPORT_ID_BYTES + 64, "key of {}", k.len());
            }
            Ok(())
        })
        .unwrap();
}

/// Order parsing never panics; what it accepts is valid, and its operation ID is a hash.
#[test]
fn order_parser_never_panics_and_accepts_only_valid_orders() {
    let shop = ShopConfig::default();
    runner(4096)
        .run(
            &(
                order_json(),
                prop::option::of("[a-z:]{1,20}"),
                any::<bool>(),
            ),
            |(v, fallback, direct)| {
                let ctx = ParseCtx {
                    fallback_key: fallback.as_deref(),
                    direct,
                };
                if let Ok(o) = Order::parse_with(&v, &ctx, &shop) {
                    prop_assert!(!o.order_id().is_empty());
                    prop_assert!(!o.lines().is_empty() && o.lines().len() <= MAX_LINES);
                    for l in o.lines() {
                        prop_assert!(is_valid_document_id(&l.item_id));
                        prop_assert!((1..=MAX_QUANTITY).contains(&l.quantity));
                    }
                    let id = hashed_id(o.kind(), o.key());
                    prop_assert!(is_hex64(&id));
                }
                Ok(())
            },
        )
        .unwrap();
}

/// The Firestore event decoder takes any bytes: noise, truncated or corrupted events.
#[test]
fn firestore_protobuf_decoder_never_panics() {
    runner(4096)
        .run(&protobuf_bytes(), |b| {
            if let Ok(Payload::Work { json, .. }) = firestore_event::decode_protobuf(&b) {
                prop_assert!(json.is_object());
            }
            Ok(())
        })
        .unwrap();
    runner(1024)
        .run(&json_value(), |v| {
            let _ = firestore_event::decode_json(&v);
            Ok(())
        })
        .unwrap();
}

/// Any key becomes a 64-character hex document ID.
#[test]
fn every_key_hashes_to_a_safe_document_id() {
    runner(4096)
        .run(&(hostile_string(), hostile_string()), |(kind, key)| {
            let id = hashed_id(&kind, &key);
            prop_assert!(is_hex64(&id) && is_valid_document_id(&id));
            Ok(())
        })
        .unwrap();
}
