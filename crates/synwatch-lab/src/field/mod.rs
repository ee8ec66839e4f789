//! The field lab: a simulated Internet behind the lab's veth, with round trips, jitter, loss,
//! ICMP limits, firewalls and middleboxes, whose ground truth is its model.
//!
//! ```text
//!   scanner namespace ── veth ── target namespace
//!                                 the responder thread (AF_PACKET on the target side, batched)
//!                                   frames ─▶ Simulator (the model, timer wheel, limits) ─▶ replies
//!                                 nftables: simulated addresses dropped before routing
//! ```
//!
//! * [`model`]: what the network does, per range (CIDR), from seeded per-host and per-(host,
//!   port) draws; the ground truth and its JSON.
//! * [`profiles`]: the named models `lan`, `internet` and `hostile`.
//! * [`simulator`]: the sans-IO core that applies the model to frames over simulated time.
//! * [`responder`]: the thread that feeds it frames and sends its replies.
//! * `packets`, `wheel`, `limits`, `draw`: probe parsing (TCP and UDP) and reply writing, the timer wheel,
//!   token buckets and the loss chain, the seeded draws.
//!
//! A [`crate::Lab`] built with [`crate::LabConfig::field`] runs a responder for its model.

mod draw;
mod limits;
pub mod model;
mod packets;
pub mod profiles;
pub mod responder;
pub mod simulator;
mod wheel;

pub use model::{FieldModel, HostKind, PortBehaviour, Transport, TrueState, ground_truth_json};
pub use packets::{MAX_REPLY_LEN, ReplyKind, parse_probe, parse_segment, write_reply};
pub use profiles::profile;
pub use responder::Responder;
pub use simulator::{FieldCounters, Simulator, SimulatorOptions};
