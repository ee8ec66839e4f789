//! The Linux I/O layer of synwatch.
//!
//! It owns everything the sans-IO core (`synwatch-engine`) must not touch: sockets, threads and
//! the clock. The threads only drive the core's [`synwatch_engine::Scheduler`]: they ask it for
//! probes, put bytes on sockets and hand replies back.
//!
//! * [`Engine`] (module `api`): start, submit, cancel; the public face. Its settings, modes and
//!   errors are in `config`, its counters in `counters`, a job's request, handle and shared
//!   state in `job`.
//! * `sender`: a SYN sender thread (scheduler → transmitters); `receiver`: the reply thread
//!   (reply socket → the jobs' state tables); [`connect`]: the connect() thread the engine falls
//!   back to without `CAP_NET_RAW`. `shared` is what these threads share, and the end of a job
//!   over its lanes. [`verify`]: real handshakes to the opens a scan found, on the caller's
//!   thread, under the same rate cap.
//! * `sockets`: the privileged sockets opened at start; `paths`: which transmitter and template a
//!   job's family uses; [`route`]: source address, interface and next hop for a target.
//! * [`transmit`]: batched transmitters (raw IP + sendmmsg, AF_PACKET TX ring); [`receive`]: the
//!   kernel-filtered reply socket; [`sys`]: the few raw Linux calls (sendmmsg, recvmmsg, TX ring,
//!   BPF, packet statistics).
//! * [`privileges`]: capability sets, and dropping them once the sockets are open.
//!
//! The modules depend on each other in one direction: `api` → the threads (`sender`,
//! `receiver`, `connect`) and `verify` → `shared` → `job` → `paths`, `counters`, `route` → `transmit`,
//! `receive` → `sys`.

mod api;
mod config;
pub mod connect;
mod counters;
mod job;
mod paths;
pub mod privileges;
pub mod receive;
mod receiver;
pub mod route;
mod sender;
mod shared;
mod sockets;
pub mod sys;
pub mod transmit;
pub mod verify;

pub use api::Engine;
pub use config::{EngineConfig, EngineError, Mode, RunningMode, TransmitChoice};
pub use counters::{CounterSnapshot, Counters, RTT_BUCKETS, RttHistogramSnapshot};
pub use job::{JobHandle, JobRequest, JobSummary, ProbeResult, Progress, SendSpan};
pub use route::Path;
pub use synwatch_engine::Priority;
pub use synwatch_wire::{PayloadFileError, PayloadTable};
pub use verify::{Verdict, Verification, Verifier, VerifyOptions};
