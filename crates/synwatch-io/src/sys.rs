//! Thin, documented wrappers over the Linux socket calls that neither socket2 nor nix expose
//! in a batch-friendly form: `sendmmsg`/`recvmmsg` over preallocated buffers, the AF_PACKET
//! TX ring (`PACKET_TX_RING`, TPACKET_V2), classic BPF filters and `PACKET_STATISTICS`.
//!
//! Every `unsafe` block states the invariant it relies on. Callers see safe functions that
//! return `std::io::Result`.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

/// `ETH_P_ALL` in network byte order, as AF_PACKET wants it.
pub const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();

/// Converts a libc return value into an `io::Result`.
pub fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 { Err(io::Error::last_os_error()) } else { Ok(result) }
}

/// Sets an integer socket option.
pub fn set_int_option(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    set_option(fd, level, name, &value)
}

/// Sets a socket option from a plain-old-data value.
pub fn set_option<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to `size_of::<T>()` readable bytes for the duration of the call.
    let result =
        unsafe { libc::setsockopt(fd, level, name, (value as *const T).cast(), size_of::<T>() as libc::socklen_t) };
    check(result).map(|_| ())
}

/// Reads and resets the AF_PACKET receive statistics: (packets, drops) since the last call.
pub fn packet_statistics(fd: RawFd) -> io::Result<(u32, u32)> {
    // SAFETY: tpacket_stats is plain old data; the kernel writes at most `len` bytes.
    let mut stats: libc::tpacket_stats = unsafe { zeroed() };
    let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: `stats` and `len` are valid for writes and describe the same buffer.
    let result = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut stats as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    check(result)?;
    Ok((stats.tp_packets, stats.tp_drops))
}

/// One classic BPF instruction.
pub fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Attaches a classic BPF program to a socket.
pub fn attach_filter(fd: RawFd, program: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut libc::sock_filter };
    set_option(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)
}

/// A socket address in the C layout, for `msghdr.msg_name`.
#[derive(Clone, Copy)]
pub struct RawSocketAddress {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl std::fmt::Debug for RawSocketAddress {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("RawSocketAddress").field("len", &self.len).finish()
    }
}

impl RawSocketAddress {
    /// The address of `ip` with port 0 (raw IP sockets ignore the port).
    pub fn for_ip(ip: IpAddr) -> RawSocketAddress {
        let address = socket2::SockAddr::from(SocketAddr::new(ip, 0));
        // SAFETY: sockaddr_storage is plain old data for which all-zero is valid.
        let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
        let len = address.len();
        // SAFETY: `address` holds `len` valid bytes and `storage` is at least that large.
        unsafe {
            std::ptr::copy_nonoverlapping(
                address.as_ptr().cast::<u8>(),
                (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                len as usize,
            );
        }
        RawSocketAddress { storage, len }
    }
}

/// Sends `count` datagrams with one `sendmmsg` call. `frames[i]` is sent to `addresses[i]`.
/// Returns how many were sent; the caller re-sends the rest (after EAGAIN/ENOBUFS too).
pub fn send_batch(fd: &impl AsRawFd, frames: &[&[u8]], addresses: &mut [RawSocketAddress]) -> io::Result<usize> {
    let count = frames.len().min(addresses.len());
    if count == 0 {
        return Ok(0);
    }
    let mut iovecs: Vec<libc::iovec> = frames[..count]
        .iter()
        .map(|frame| libc::iovec { iov_base: frame.as_ptr() as *mut libc::c_void, iov_len: frame.len() })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = (0..count)
        .map(|index| {
            // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
            let mut header: libc::msghdr = unsafe { zeroed() };
            header.msg_name = (&mut addresses[index].storage as *mut libc::sockaddr_storage).cast();
            header.msg_namelen = addresses[index].len;
            header.msg_iov = &mut iovecs[index];
            header.msg_iovlen = 1;
            libc::mmsghdr { msg_hdr: header, msg_len: 0 }
        })
        .collect();
    // SAFETY: every header points at an iovec and an address that outlive the call, and the
    // iovecs point at frames the caller keeps alive.
    let sent =
        unsafe { libc::sendmmsg(fd.as_raw_fd(), headers.as_mut_ptr(), count as libc::c_uint, libc::MSG_DONTWAIT) };
    check(sent).map(|sent| sent as usize)
}

/// Reusable buffers for `recvmmsg`.
pub struct ReceiveBatch {
    buffers: Vec<[u8; 2048]>,
    addresses: Vec<libc::sockaddr_ll>,
    lengths: Vec<usize>,
    packet_types: Vec<u8>,
    received: usize,
}

impl std::fmt::Debug for ReceiveBatch {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ReceiveBatch")
            .field("capacity", &self.buffers.len())
            .field("received", &self.received)
            .finish()
    }
}

impl ReceiveBatch {
    /// Buffers for `capacity` packets of up to 2048 bytes each.
    pub fn new(capacity: usize) -> ReceiveBatch {
        ReceiveBatch {
            buffers: vec![[0u8; 2048]; capacity],
            // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
            addresses: vec![unsafe { zeroed() }; capacity],
            lengths: vec![0; capacity],
            packet_types: vec![0; capacity],
            received: 0,
        }
    }

    /// Receives up to the batch's capacity with one `recvmmsg` call; waits at most the socket's
    /// receive timeout for the first packet. Returns the number received (0 on timeout).
    pub fn receive(&mut self, fd: &impl AsRawFd) -> io::Result<usize> {
        let capacity = self.buffers.len();
        let mut iovecs: Vec<libc::iovec> = self
            .buffers
            .iter_mut()
            .map(|buffer| libc::iovec { iov_base: buffer.as_mut_ptr().cast(), iov_len: buffer.len() })
            .collect();
        let mut headers: Vec<libc::mmsghdr> = (0..capacity)
            .map(|index| {
                // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
                let mut header: libc::msghdr = unsafe { zeroed() };
                header.msg_name = (&mut self.addresses[index] as *mut libc::sockaddr_ll).cast();
                header.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                header.msg_iov = &mut iovecs[index];
                header.msg_iovlen = 1;
                libc::mmsghdr { msg_hdr: header, msg_len: 0 }
            })
            .collect();
        // SAFETY: headers point at buffers and addresses owned by `self`, alive for the call.
        // MSG_WAITFORONE returns as soon as one packet is there, after blocking for the first.
        let received = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                headers.as_mut_ptr(),
                capacity as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        self.received = 0;
        match check(received) {
            Ok(count) => {
                let count = count as usize;
                for (index, header) in headers.iter().enumerate().take(count) {
                    self.lengths[index] = (header.msg_len as usize).min(2048);
                    self.packet_types[index] = self.addresses[index].sll_pkttype;
                }
                self.received = count;
                Ok(count)
            }
            Err(error) if matches!(error.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) => Ok(0),
            Err(error) => Err(error),
        }
    }

    /// The packets of the last [`ReceiveBatch::receive`], with their `sll_pkttype`.
    pub fn packets(&self) -> impl Iterator<Item = (&[u8], u8)> {
        (0..self.received).map(|index| (&self.buffers[index][..self.lengths[index]], self.packet_types[index]))
    }
}
