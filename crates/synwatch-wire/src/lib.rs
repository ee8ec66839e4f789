//! Packet formats of synwatch: the SYN probes it sends and the replies it accepts.
//!
//! Two halves, after smoltcp's `wire` module:
//!
//! * [`syn`] builds IPv4 and IPv6 TCP SYN probes. A [`syn::SynTemplate`] is crafted once with
//!   `pnet_packet`; per probe only addresses, ports, sequence number, the TCP timestamp value and
//!   the checksums change, so filling a probe is a small copy and two checksum passes.
//! * [`reply`] parses what comes back (TCP SYN-ACK / RST, ICMPv4 and ICMPv6 destination
//!   unreachable) into a validated [`reply::ReplyRepr`].
//!
//! Contract: **parsing untrusted bytes never panics.** Every length is checked before a slice is
//! taken and `pnet_packet` views are only built over buffers at least their minimum size. The
//! fuzz target `fuzz/fuzz_targets/parse_reply.rs` exercises this.
//!
//! Checksums of received packets are deliberately not verified: on loopback and veth the kernel
//! hands packets up with offloaded (partial) checksums, and a reply only counts when it carries
//! the probe's keyed cookie, which a corrupted packet will not.

pub mod reply;
pub mod syn;

pub use reply::{ParseError, QuotedProbe, ReplyRepr, TcpReply, UnreachableReply, parse_reply};
pub use syn::{LinkLayer, SynFields, SynTemplate};
