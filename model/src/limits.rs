//! Message sizes every part of Gantry agrees on. A step's outputs travel from the agent to the
//! coordinator in one message and then through the Raft log in one entry, so each bound below
//! is at least the one before it plus room for the envelope.

/// The largest a step's outputs (its output parameters and artifact metadata, as JSON) may
/// be. A step over it fails with an error that says so; large data belongs in an artifact.
pub const MAX_STEP_OUTPUTS_BYTES: usize = 4 << 20;

/// The largest outcome report a coordinator records: the outputs above plus room for the rest
/// (an error message, an exit code).
pub const MAX_STEP_OUTCOME_BYTES: usize = MAX_STEP_OUTPUTS_BYTES + (64 << 10);

/// The largest message on an agent session, either way (a result, an assignment).
pub const MAX_AGENT_MESSAGE_BYTES: usize = 16 << 20;

/// The largest request a client may send (a submission carries the pipeline, at most 4 MiB).
pub const MAX_CLIENT_REQUEST_BYTES: usize = 16 << 20;

/// The largest answer a client may receive (a run with thousands of tasks).
pub const MAX_CLIENT_RESPONSE_BYTES: usize = 64 << 20;

/// Raft messages are sent in batches of at most this many bytes (one message over it goes
/// alone).
pub const MAX_RAFT_BATCH_BYTES: usize = 8 << 20;

/// The largest Raft batch or snapshot chunk a peer may send: a batch of the size above, or one
/// message holding an entry of the largest command.
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 << 20;

/// Applied entries between snapshots unless `--snapshot-entries` says otherwise: etcd's
/// `--snapshot-count` default. A snapshot costs time in proportion to the whole state on every
/// node; at 10 000, `gantry-bench raft` spent a quarter of all CPU writing them and its p99 at
/// 128 clients doubled. The price is a longer log to keep and to replay after a restart.
pub const DEFAULT_SNAPSHOT_ENTRIES: u64 = 100_000;
