//! Integration tests against the real Firestore emulator (one per binary, a project per test).

mod batching;
mod budget;
mod clients;
mod concurrency;
mod console;
mod deliveries;
mod demo;
mod deploy;
mod examples;
mod grpc_fault;
mod helpers;
mod hostile;
mod limits_proxy;
mod observability;
mod operate;
mod orders;
mod pubsub_e2e;
mod redrive;
mod reliability;
mod scale_out;
mod status;
mod tasks;
