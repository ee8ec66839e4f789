//! Batched transmitters.
//!
//! Two ways to put probes on the wire, both batching so the kernel is entered once per batch
//! rather than once per packet (pnet's `transport`/`datalink` send paths do one syscall each):
//!
//! * [`RawIpTransmitter`]: an `IPPROTO_RAW` socket (IPv4 or IPv6, header included) and
//!   `sendmmsg`. The kernel routes and resolves neighbours; it works everywhere, loopback and
//!   on-link targets included.
//! * [`RingTransmitter`]: an `AF_PACKET` socket with a TPACKET_V2 TX ring on one interface. Frames
//!   are written into shared memory and one `send()` flushes them all; the fastest path, used
//!   when the link-layer destination is known (a gateway with a cached neighbour entry, or `lo`).
//!
//! Neither ever drops a probe on backpressure: a full socket buffer (`ENOBUFS`, `EAGAIN`) or a
//! full ring leaves the unsent frames queued and [`Flush::Backpressure`] tells the sender thread
//! to pause briefly and flush again.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{Ordering, fence};

use socket2::{Domain, Protocol, Socket, Type};

use crate::sys::{self, RawSocketAddress};

/// Bytes reserved per frame slot: larger than any probe frame.
/// Room for the largest probe: a UDP one with a 1200-byte payload over IPv6 and Ethernet
/// (`synwatch_wire::MAX_UDP_FRAME_LEN`, 1262), rounded so that a ring frame (with its 32-byte
/// TPACKET_V2 header) stays a multiple of 16.
const SLOT_LEN: usize = 1264;

/// The result of a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued was handed to the kernel.
    Done {
        /// Frames handed over by this flush.
        sent: usize,
    },
    /// The kernel pushed back; `sent` frames went, the rest stay queued for the next flush.
    Backpressure {
        /// Frames handed over by this flush.
        sent: usize,
    },
}

/// A batched transmitter.
pub trait Transmit: Send {
    /// A slot for the next frame, or `None` when the batch or ring is full (flush first).
    fn slot(&mut self) -> Option<&mut [u8]>;
    /// Queues the frame just written into the slot, `len` bytes long, for `destination`.
    fn commit(&mut self, len: usize, destination: IpAddr);
    /// Frames queued and not yet handed to the kernel.
    fn pending(&self) -> usize;
    /// Hands queued frames to the kernel.
    fn flush(&mut self) -> io::Result<Flush>;
    /// A short name for logs (`sendmmsg` or `tx-ring`).
    fn kind(&self) -> &'static str;
}

fn is_backpressure(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR))
}

/// Raw IP socket plus `sendmmsg`.
#[derive(Debug)]
pub struct RawIpTransmitter {
    socket: Socket,
    slots: Vec<[u8; SLOT_LEN]>,
    lengths: Vec<usize>,
    addresses: Vec<RawSocketAddress>,
    /// Frames `[sent, queued)` are committed and not yet sent.
    queued: usize,
    sent: usize,
}

impl RawIpTransmitter {
    /// Opens a header-including raw socket for IPv4 or IPv6 with a batch of `batch` frames.
    /// Fails with `PermissionDenied` without `CAP_NET_RAW`.
    pub fn open(ipv6: bool, batch: usize) -> io::Result<RawIpTransmitter> {
        let domain = if ipv6 { Domain::IPV6 } else { Domain::IPV4 };
        // IPPROTO_RAW implies IP_HDRINCL (and IPV6_HDRINCL since Linux 4.5): we write the IP header.
        let socket = Socket::new_raw(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))?;
        socket.set_nonblocking(true)?;
        let _ = socket.set_send_buffer_size(4 << 20);
        let batch = batch.max(1);
        Ok(RawIpTransmitter {
            socket,
            slots: vec![[0u8; SLOT_LEN]; batch],
            lengths: vec![0; batch],
            addresses: vec![
                RawSocketAddress::for_ip(if ipv6 {
                    "::1".parse().expect("valid")
                } else {
                    "127.0.0.1".parse().expect("valid")
                });
                batch
            ],
            queued: 0,
            sent: 0,
        })
    }
}

impl Transmit for RawIpTransmitter {
    fn slot(&mut self) -> Option<&mut [u8]> {
        self.slots.get_mut(self.queued).map(|slot| &mut slot[..])
    }

    fn commit(&mut self, len: usize, destination: IpAddr) {
        self.lengths[self.queued] = len;
        self.addresses[self.queued] = RawSocketAddress::for_ip(destination);
        self.queued += 1;
    }

    fn pending(&self) -> usize {
        self.queued - self.sent
    }

    fn flush(&mut self) -> io::Result<Flush> {
        let mut sent_now = 0;
        while self.sent < self.queued {
            let frames: Vec<&[u8]> =
                (self.sent..self.queued).map(|index| &self.slots[index][..self.lengths[index]]).collect();
            match sys::send_batch(&self.socket, &frames, &mut self.addresses[self.sent..self.queued]) {
                Ok(0) => return Ok(Flush::Backpressure { sent: sent_now }),
                Ok(count) => {
                    self.sent += count;
                    sent_now += count;
                }
                Err(error) if is_backpressure(&error) => {
                    return Ok(Flush::Backpressure { sent: sent_now });
                }
                Err(error) => {
                    // A permanent error for the first frame (for example EPERM from a local
                    // firewall, or a route that vanished): skip it so one bad target cannot
                    // wedge the batch, and report it.
                    self.sent += 1;
                    if self.sent == self.queued {
                        self.sent = 0;
                        self.queued = 0;
                    }
                    return Err(error);
                }
            }
        }
        self.sent = 0;
        self.queued = 0;
        Ok(Flush::Done { sent: sent_now })
    }

    fn kind(&self) -> &'static str {
        "sendmmsg"
    }
}

/// TPACKET_V2 frame status values (linux/if_packet.h).
const TP_STATUS_AVAILABLE: u32 = 0;
const TP_STATUS_SEND_REQUEST: u32 = 1;
const TP_STATUS_WRONG_FORMAT: u32 = 4;
/// Offset of frame data after the tpacket2_hdr (TPACKET_ALIGN(sizeof(tpacket2_hdr)) = 32).
const TPACKET2_DATA_OFFSET: usize = 32;

/// An AF_PACKET TX ring bound to one interface.
#[derive(Debug)]
pub struct RingTransmitter {
    fd: OwnedFd,
    ring: NonNull<u8>,
    ring_len: usize,
    frame_size: usize,
    frame_count: usize,
    next: usize,
    /// Frames marked SEND_REQUEST since the last successful flush.
    queued: usize,
    wrong_format: u64,
}

// SAFETY: the ring mapping is owned by this value alone and only touched through `&mut self`.
unsafe impl Send for RingTransmitter {}

impl RingTransmitter {
    /// Opens a TX ring of about `frame_count` frames on interface `interface_index`.
    pub fn open(interface_index: u32, frame_count: usize) -> io::Result<RingTransmitter> {
        RingTransmitter::on_socket(RingTransmitter::open_socket()?, interface_index, frame_count)
    }

    /// Opens the packet socket a ring is later set up on. This is the only step that needs
    /// `CAP_NET_RAW`: the engine opens these sockets at start, before it drops its privileges,
    /// and [`RingTransmitter::on_socket`] configures one when a job first needs it.
    pub fn open_socket() -> io::Result<OwnedFd> {
        // Protocol 0: this socket transmits only and receives nothing.
        // SAFETY: plain socket(2) call; the result is checked and owned below.
        let raw = sys::check(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    /// Sets up a TX ring of about `frame_count` frames on a socket from
    /// [`RingTransmitter::open_socket`] and binds it to interface `interface_index`. Needs no
    /// privilege.
    pub fn on_socket(fd: OwnedFd, interface_index: u32, frame_count: usize) -> io::Result<RingTransmitter> {
        sys::set_int_option(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_VERSION,
            libc::tpacket_versions::TPACKET_V2 as libc::c_int,
        )?;
        // PACKET_QDISC_BYPASS is deliberately not set: with it, frames for a device whose link is
        // down stay in the ring forever instead of being dropped by the stack.
        let frame_size = SLOT_LEN + TPACKET2_DATA_OFFSET; // 1296, a multiple of TPACKET_ALIGNMENT (16)
        let block_size = 1usize << 16;
        let frames_per_block = block_size / frame_size;
        let block_count = frame_count.max(frames_per_block).div_ceil(frames_per_block);
        let request = libc::tpacket_req {
            tp_block_size: block_size as u32,
            tp_block_nr: block_count as u32,
            tp_frame_size: frame_size as u32,
            tp_frame_nr: (block_count * frames_per_block) as u32,
        };
        sys::set_option(fd.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_TX_RING, &request)?;
        let ring_len = block_size * block_count;
        // SAFETY: maps the ring the kernel just allocated for this socket; checked for failure.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_ifindex = interface_index as i32;
        address.sll_protocol = 0;
        // SAFETY: `address` is a valid sockaddr_ll of the given length.
        sys::check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        })?;
        Ok(RingTransmitter {
            fd,
            ring: NonNull::new(ring.cast()).expect("mmap returned a non-null mapping"),
            ring_len,
            frame_size,
            frame_count: block_count * frames_per_block,
            next: 0,
            queued: 0,
            wrong_format: 0,
        })
    }

    fn frame(&self, index: usize) -> *mut u8 {
        // Frames never straddle blocks: a block holds a whole number of frames and its tail is
        // unused, so the offset is the block's start plus the frame's place inside it.
        let frames_per_block = (1usize << 16) / self.frame_size;
        let offset = (index / frames_per_block) * (1 << 16) + (index % frames_per_block) * self.frame_size;
        debug_assert!(offset + self.frame_size <= self.ring_len);
        // SAFETY: offset is inside the mapping (checked above in debug builds, by construction).
        unsafe { self.ring.as_ptr().add(offset) }
    }

    fn status(&self, index: usize) -> u32 {
        // SAFETY: tp_status is the first u32 of the frame header; the kernel updates it
        // concurrently, hence the volatile read followed by an acquire fence.
        let status = unsafe { std::ptr::read_volatile(self.frame(index).cast::<u32>()) };
        fence(Ordering::Acquire);
        status
    }

    /// Frames the kernel rejected as malformed (should stay zero).
    pub fn wrong_format(&self) -> u64 {
        self.wrong_format
    }
}

impl Transmit for RingTransmitter {
    fn slot(&mut self) -> Option<&mut [u8]> {
        let status = self.status(self.next);
        if status == TP_STATUS_WRONG_FORMAT {
            self.wrong_format += 1;
        } else if status != TP_STATUS_AVAILABLE {
            return None;
        }
        let frame = self.frame(self.next);
        // SAFETY: the frame is AVAILABLE, so user space owns its data area until we hand it
        // back with SEND_REQUEST; the area is SLOT_LEN bytes after the header.
        Some(unsafe { std::slice::from_raw_parts_mut(frame.add(TPACKET2_DATA_OFFSET), SLOT_LEN) })
    }

    fn commit(&mut self, len: usize, _destination: IpAddr) {
        let frame = self.frame(self.next);
        // SAFETY: we own the frame (see `slot`). tpacket2_hdr: tp_status u32 at 0, tp_len u32 at
        // 4, tp_snaplen u32 at 8. The release fence orders the data and length before the status
        // store that hands the frame to the kernel.
        unsafe {
            std::ptr::write_volatile(frame.add(4).cast::<u32>(), len as u32);
            std::ptr::write_volatile(frame.add(8).cast::<u32>(), len as u32);
            fence(Ordering::Release);
            std::ptr::write_volatile(frame.cast::<u32>(), TP_STATUS_SEND_REQUEST);
        }
        self.next = (self.next + 1) % self.frame_count;
        self.queued += 1;
    }

    fn pending(&self) -> usize {
        self.queued
    }

    fn flush(&mut self) -> io::Result<Flush> {
        if self.queued == 0 {
            return Ok(Flush::Done { sent: 0 });
        }
        // SAFETY: send(2) with a null buffer of length 0 asks the kernel to transmit the ring.
        let result = unsafe { libc::send(self.fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT) };
        match sys::check(result as libc::c_int) {
            Ok(_) => {
                let sent = self.queued;
                self.queued = 0;
                Ok(Flush::Done { sent })
            }
            // The frames stay SEND_REQUEST in the ring; the next flush sends them.
            Err(error) if is_backpressure(&error) => Ok(Flush::Backpressure { sent: 0 }),
            Err(error) => Err(error),
        }
    }

    fn kind(&self) -> &'static str {
        "tx-ring"
    }
}

impl Drop for RingTransmitter {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `open`.
        unsafe {
            libc::munmap(self.ring.as_ptr().cast(), self.ring_len);
        }
    }
}
