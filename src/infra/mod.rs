//! What every command and both long-running processes share: the NATS connection, the
//! JetStream topology of contract §2, retrying with backoff, files beside the database, and seed files.

pub mod backoff;
pub mod files;
pub mod follow;
pub mod nats;
pub mod seed;
pub mod shutdown;
pub mod topology;
