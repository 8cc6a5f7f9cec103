//! # Weir: a stateful stream processor for Kafka
//!
//! The house from the door down; every import points down (or to a ground-floor module):
//!
//! ```text
//!   cli        the door: `weir run|validate|produce|bench|serve|deploy|status|replay|...`
//!   server     `weir serve`: many pipelines in one process, persisted deployments, the HTTP
//!              API (axum), `/metrics` and the web page
//!   runtime    runs a pipeline. `driver` is the one loop and checkpoint protocol (its docs
//!              state the at-least-once argument); `file` and `kafka` are its sources
//!              (`kafka` adds rebalances and session retry; `kafka::redrive` re-feeds dead
//!              letters; `kafka::changelog` writes and restores the changelog topic); `engine` takes one record through the pipeline; `outputs` opens the
//!              sinks; `replay` rewinds a stopped pipeline's state
//!   state      the write cache of window accumulators in front of RocksDB; `checkpoint`:
//!              the checkpoint record and key layout, one WriteBatch per checkpoint;
//!              `changelog`: a checkpoint's changes as changelog records, and their replay
//!   sink       derived events (`encode`: results and dead letters, encoded once) to file,
//!              stdout, Kafka, PostgreSQL upsert; the idempotency contract
//!   operators  filter/map (CEL), key_by, window assignment, watermarks, aggregates
//!   pipeline   definition types, validation (every problem, with path and fix), the Plan
//!   source     raw records with coordinates (topic/partition/offset, file/line)
//!   schema     bytes -> validated Avro record (Confluent wire, raw Avro, JSON); registry
//!   ground     monitor (counters, typed telemetry, group offsets, Prometheus text),
//!              redact (secrets out of text), faults (crash points for tests)
//! ```
//!
//! One Kafka record, in order: `runtime/kafka` polls it (`source/kafka.rs` makes the
//! record) -> `runtime/driver.rs` hands it on -> `runtime/engine.rs`: `schema/codec.rs`
//! decodes and validates, `operators/` filters, maps, keys and assigns windows,
//! `state/windows.rs` accumulates, `operators/watermark.rs` closes windows -> each result
//! (`sink/encode.rs`) through `runtime/outputs.rs` to `sink/kafka.rs` and
//! `sink/postgres.rs` -> at a checkpoint, `runtime/driver/protocol.rs` flushes the sinks,
//! (with `state.changelog`) sends `state/changelog.rs`'s records through
//! `runtime/kafka/changelog.rs`, writes `state/checkpoint.rs`'s batch, and `runtime/kafka`
//! commits the offsets (`runtime/kafka/callbacks.rs`, which also checkpoints a revoked
//! partition and restores an assigned one). With `delivery: exactly_once` every Kafka write goes through one
//! transactional producer (`runtime/kafka/transaction.rs`), and the offsets are committed
//! in the checkpoint's transaction, before the batch.
//!
//! Invalid events never stop a pipeline: they go to the dead letter with the reason
//! (`decode`, `schema`, `expression`, `late`), their source coordinates and original bytes.

pub mod cli;
pub mod faults;
pub mod kafka_client;
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
