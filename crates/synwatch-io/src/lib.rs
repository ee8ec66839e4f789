//! The Linux I/O layer of synwatch.
//!
//! It owns everything the sans-IO core (`synwatch-engine`) must not touch: sockets, threads and
//! the clock.
//!
//! * [`route`]: source address, interface and next hop for a target.
//! * [`sys`]: the few raw Linux calls (sendmmsg, recvmmsg, TX ring, BPF, packet statistics).
//! * [`transmit`]: batched transmitters (raw IP + sendmmsg, AF_PACKET TX ring).
//! * [`receive`]: the kernel-filtered reply socket.
//! * [`engine`]: the long-lived sender/receiver pair that runs many jobs at once.

pub mod engine;
pub mod receive;
pub mod route;
pub mod sys;
pub mod transmit;

pub use engine::{
    CounterSnapshot, Engine, EngineConfig, EngineError, JobHandle, JobRequest, JobSummary, ProbeResult, Progress,
    TransmitChoice,
};
pub use route::Path;
