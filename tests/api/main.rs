//! Integration tests against the real Firestore emulator (one per binary, a project per test).

mod batching;
mod concurrency;
mod deliveries;
mod deploy;
mod helpers;
mod hostile;
mod observability;
mod operate;
mod orders;
mod pubsub_e2e;
mod reliability;
mod status;
mod tasks;
