//! The integration tests, one module per area, in one binary: each starts its own `nats-server`
//! (a free port, a temporary store, killed on drop) and runs the real `truebit-federation`
//! binary or library against it, so they run in parallel. `common` is their kit on top of
//! `truebit-testkit` (tests/support).
//!
//! Run one area with `cargo test --test it keys::`, one test by its name.

mod common;

mod cluster;
mod dashboard;
mod deploy;
mod digest;
mod ha;
mod keys;
mod live;
mod node;
mod ops;
mod process;
mod prometheus;
mod replay;
mod topology;
