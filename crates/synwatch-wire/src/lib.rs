//! Packet formats of synwatch: the SYN and UDP probes it sends and the replies it accepts.
//!
//! Two halves, after smoltcp's `wire` module:
//!
//! * [`syn`] builds IPv4 and IPv6 TCP SYN probes. A [`syn::SynTemplate`] is crafted once with
//!   `pnet_packet`; per probe only addresses, ports, sequence number, the TCP timestamp value and
//!   the checksums change, so filling a probe is a small copy and two checksum passes.
//! * [`udp`] builds IPv4 and IPv6 UDP probes around a payload of [`payloads`]: one per
//!   well-known port that makes its service answer, with the probe's cookie where the protocol
//!   echoes an id, or a user's from a payload file.
//! * [`reply`] parses what comes back (TCP SYN-ACK / RST, UDP datagrams, ICMPv4 and ICMPv6
//!   destination unreachable quoting TCP or UDP) into a validated [`reply::ReplyRepr`].
//!
//! Contract: **parsing untrusted bytes never panics.** Every length is checked before a slice is
//! taken and `pnet_packet` views are only built over buffers at least their minimum size. The
//! fuzz target `fuzz/fuzz_targets/parse_reply.rs` exercises this.
//!
//! Checksums of received packets are deliberately not verified: on loopback and veth the kernel
//! hands packets up with offloaded (partial) checksums, and a reply only counts when it carries
//! the probe's keyed cookie, which a corrupted packet will not.

pub mod payloads;
pub mod reply;
pub mod syn;
pub mod udp;

pub use payloads::{CookieBits, CookieSlot, PayloadFileError, PayloadTable, UdpPayload};
pub use reply::{
    ParseError, PayloadHead, QuotedProbe, QuotedTransport, ReplyRepr, TcpReply, UdpReply, UnreachableReply, parse_reply,
};
pub use syn::{LinkLayer, SynFields, SynTemplate};
pub use udp::{MAX_UDP_FRAME_LEN, UdpFields, UdpTemplate};
