//! The Linux I/O layer of synwatch.
//!
//! It owns everything the sans-IO core (`synwatch-engine`) must not touch: sockets, threads and
//! the clock.
//!
//! * [`route`]: source address, interface and next hop for a target.
//! * [`sys`]: the few raw Linux calls (sendmmsg, recvmmsg, TX ring, BPF, packet statistics).
//! * [`transmit`]: batched transmitters (raw IP + sendmmsg, AF_PACKET TX ring).
//! * [`receive`]: the kernel-filtered reply socket.
//! * [`engine`]: the long-lived sender/receiver threads that run many jobs at once.
//! * [`connect`]: the connect() scanner the engine falls back to without `CAP_NET_RAW`.
//! * [`privileges`]: capability sets, and dropping them once the sockets are open.

pub mod connect;
pub mod engine;
mod lane;
pub mod privileges;
pub mod receive;
pub mod route;
pub mod sys;
pub mod transmit;

pub use engine::{
    CounterSnapshot, Engine, EngineConfig, EngineError, JobHandle, JobRequest, JobSummary, Mode, Priority, ProbeResult,
    Progress, RunningMode, SendSpan, TransmitChoice,
};
pub use route::Path;
