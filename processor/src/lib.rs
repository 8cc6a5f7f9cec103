//! # Weir: a stateful stream processor for Kafka
//!
//! One event's path, top to bottom; each module reads only from the ones above it:
//!
//! ```text
//!   pipelines/*.yaml ──► pipeline   definition types, validation (every problem, with path
//!                          │          and fix), compile to a Plan
//!   event log / Kafka ─► source     raw records with coordinates (topic/partition/offset,
//!                          │          file/line); no decoding here
//!                          ▼
//!                        schema     bytes -> validated Avro record (Confluent wire, raw Avro,
//!                          │          JSON), writer->reader resolution set up once; registry client
//!                          ▼
//!                        operators  filter/map (CEL), key_by, window assignment, watermarks,
//!                          │          aggregate accumulators
//!                          ▼
//!                        state      write cache of window accumulators in front of RocksDB;
//!                          │          one WriteBatch per checkpoint (state + positions)
//!                          ▼
//!                        sink       derived events (file, stdout, Kafka, PostgreSQL upsert)
//!                          │          and dead letters (file, Kafka topic); the idempotency contract
//!                          ▼
//!                        monitor    counters, typed telemetry (one `Live` status per
//!                                   pipeline), group offsets, Prometheus text
//!
//!   runtime  wires them per record and runs the checkpoint loop: `run_file` for event
//!            logs, `kafka::run_kafka` for consumer groups (its docs state the at-least-once
//!            argument), `replay` to rewind a stopped pipeline, `kafka::redrive` to re-feed
//!            dead letters;
//!   server   `weir serve`: many pipelines in one process, persisted deployments, the HTTP
//!            API (axum), `/metrics` and the web page;
//!   cli      is the door (`weir run|validate|produce|bench|serve|deploy|status|replay|...`).
//!   faults   (the ground floor, imports nothing) named crash points for the crash tests.
//! ```
//!
//! Invalid events never stop a pipeline: they go to the dead letter with the reason
//! (`decode`, `schema`, `expression`, `late`), their source coordinates and original bytes.

pub mod cli;
pub mod faults;
pub mod monitor;
pub mod operators;
pub mod pipeline;
pub mod redact;
pub mod runtime;
pub mod schema;
pub mod server;
pub mod sink;
pub mod source;
pub mod state;
