//! Integration tests against the real Firestore emulator (one per binary, a project per test).

mod concurrency;
mod helpers;
mod orders;
