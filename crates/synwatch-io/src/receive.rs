//! The receiving socket: AF_PACKET, cooked (`SOCK_DGRAM`, so packets start at the IP header),
//! on all interfaces, with a classic BPF filter in the kernel so that only candidate replies
//! are copied to user space, a large receive buffer, batched reads, and the kernel's drop
//! counter.
//!
//! The filter (hand-written: the program is 23 instructions, smaller than any BPF-assembler
//! dependency) accepts a packet when it is not one we are sending (`PACKET_OUTGOING`) and is
//!
//! * IPv4 TCP or UDP whose destination port lies in our source-port range, or any ICMPv4, or
//! * IPv6 TCP or UDP (without extension headers) to a port in the range, or any ICMPv6.
//!
//! Everything else stays in the kernel. Replies are then validated in user space.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use synwatch_engine::SourcePortRange;

use crate::sys::{self, ReceiveBatch, bpf};

// Classic BPF opcodes (linux/filter.h).
const LD_B_ABS: u16 = 0x30;
const LD_H_ABS: u16 = 0x28;
const LD_H_IND: u16 = 0x48;
const LDX_B_MSH: u16 = 0xb1;
const ALU_AND_K: u16 = 0x54;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JGT_K: u16 = 0x25;
const RET_K: u16 = 0x06;
/// `PACKET_IGNORE_OUTGOING` from linux/if_packet.h.
const PACKET_IGNORE_OUTGOING: libc::c_int = libc::PACKET_IGNORE_OUTGOING;
/// Ancillary load offset of the packet type (SKF_AD_OFF + SKF_AD_PKTTYPE).
const SKF_AD_PKTTYPE: u32 = 0xffff_f000 + 4;

/// The BPF program described in the module documentation. Jump offsets are relative: a
/// branch from instruction `i` lands on `i + 1 + offset`. Instruction 21 drops, 22 accepts.
/// TCP and UDP keep their destination port at the same offset, so one check serves both.
pub fn reply_filter(ports: SourcePortRange) -> Vec<libc::sock_filter> {
    let first = u32::from(ports.first);
    let last = u32::from(ports.last);
    vec![
        /* 0 */ bpf(LD_B_ABS, 0, 0, SKF_AD_PKTTYPE),
        /* 1 */ bpf(JEQ_K, 19, 0, u32::from(libc::PACKET_OUTGOING)), // outgoing -> 21
        /* 2 */ bpf(LD_B_ABS, 0, 0, 0),
        /* 3 */ bpf(ALU_AND_K, 0, 0, 0xf0),
        /* 4 */ bpf(JEQ_K, 0, 8, 0x40), // IPv4 -> 5, else -> 13
        /* 5 */ bpf(LD_B_ABS, 0, 0, 9), // IPv4 protocol
        /* 6 */ bpf(JEQ_K, 15, 0, 1), // ICMP -> 22
        /* 7 */ bpf(JEQ_K, 1, 0, 6), // TCP -> 9
        /* 8 */ bpf(JEQ_K, 0, 12, 17), // UDP -> 9, else -> 21
        /* 9 */ bpf(LDX_B_MSH, 0, 0, 0), // X = IPv4 header length
        /* 10 */ bpf(LD_H_IND, 0, 0, 2), // TCP or UDP destination port
        /* 11 */ bpf(JGE_K, 0, 9, first), // below the range -> 21
        /* 12 */ bpf(JGT_K, 8, 9, last), // above -> 21, inside -> 22
        /* 13 */ bpf(JEQ_K, 0, 7, 0x60), // IPv6 -> 14, else -> 21
        /* 14 */ bpf(LD_B_ABS, 0, 0, 6), // IPv6 next header
        /* 15 */ bpf(JEQ_K, 6, 0, 58), // ICMPv6 -> 22
        /* 16 */ bpf(JEQ_K, 1, 0, 6), // TCP -> 18
        /* 17 */ bpf(JEQ_K, 0, 3, 17), // UDP -> 18, else -> 21
        /* 18 */
        bpf(LD_H_ABS, 0, 0, 42), // destination port after the 40-byte header
        /* 19 */ bpf(JGE_K, 0, 1, first), // below -> 21
        /* 20 */ bpf(JGT_K, 0, 1, last), // above -> 21, inside -> 22
        /* 21 */ bpf(RET_K, 0, 0, 0),
        /* 22 */ bpf(RET_K, 0, 0, 0xffff),
    ]
}

/// The receiving socket.
#[derive(Debug)]
pub struct ReplySocket {
    fd: OwnedFd,
    batch: ReceiveBatch,
}

impl ReplySocket {
    /// Opens the socket with its filter and an 8 MiB receive buffer (forced past `rmem_max`
    /// when privileged), and a receive timeout so the thread can notice shutdown.
    pub fn open(
        ports: SourcePortRange,
        batch: usize,
        receive_buffer: usize,
        timeout: Duration,
    ) -> io::Result<ReplySocket> {
        // SAFETY: plain socket(2) call; the result is checked and owned below.
        let raw = sys::check(unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::c_int::from(sys::ETH_P_ALL_BE))
        })?;
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        sys::attach_filter(fd.as_raw_fd(), &reply_filter(ports))?;
        // Without this, every probe we transmit is also delivered to this socket (it taps all
        // traffic) only to be rejected by the filter: a clone and a filter run per sent packet.
        // Linux 4.20+; on older kernels the filter's PACKET_OUTGOING check still drops them.
        let _ = sys::set_int_option(fd.as_raw_fd(), libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1);
        let size = receive_buffer.min(i32::MAX as usize) as libc::c_int;
        if sys::set_int_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
            sys::set_int_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, size)?;
        }
        let timeout = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        sys::set_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)?;
        // Reading the statistics resets them, so drops counted later are this engine's own.
        let _ = sys::packet_statistics(fd.as_raw_fd());
        Ok(ReplySocket { fd, batch: ReceiveBatch::new(batch.max(1)) })
    }

    /// Reads one batch (waiting up to the timeout for the first packet); returns its size.
    pub fn receive(&mut self) -> io::Result<usize> {
        self.batch.receive(&self.fd)
    }

    /// The packets of the last batch, less any we sent ourselves.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.batch.packets().filter(|(_, packet_type)| *packet_type != libc::PACKET_OUTGOING).map(|(packet, _)| packet)
    }

    /// Packets the kernel dropped for lack of buffer space since the last call.
    pub fn take_drops(&self) -> io::Result<u64> {
        sys::packet_statistics(self.fd.as_raw_fd()).map(|(_, drops)| u64::from(drops))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal interpreter for the instructions the filter uses, so the hand-written jump
    /// offsets are checked without a kernel.
    fn run(program: &[libc::sock_filter], packet: &[u8], packet_type: u8) -> u32 {
        let (mut accumulator, mut x, mut pc) = (0u32, 0u32, 0usize);
        let byte = |offset: usize| u32::from(packet.get(offset).copied().unwrap_or(0));
        loop {
            let instruction = program[pc];
            let k = instruction.k;
            pc += 1;
            let jump = |taken: bool| usize::from(if taken { instruction.jt } else { instruction.jf });
            match instruction.code {
                LD_B_ABS if k == SKF_AD_PKTTYPE => accumulator = u32::from(packet_type),
                LD_B_ABS => accumulator = byte(k as usize),
                LD_H_ABS => accumulator = byte(k as usize) << 8 | byte(k as usize + 1),
                LD_H_IND => accumulator = byte((x + k) as usize) << 8 | byte((x + k) as usize + 1),
                LDX_B_MSH => x = (byte(k as usize) & 0xf) * 4,
                ALU_AND_K => accumulator &= k,
                JEQ_K => pc += jump(accumulator == k),
                JGE_K => pc += jump(accumulator >= k),
                JGT_K => pc += jump(accumulator > k),
                RET_K => return k,
                code => panic!("instruction {code:#x} not in the interpreter"),
            }
        }
    }

    fn ipv4_tcp(destination_port: u16) -> Vec<u8> {
        let mut packet = vec![0u8; 40];
        packet[0] = 0x45;
        packet[9] = 6;
        packet[22..24].copy_from_slice(&destination_port.to_be_bytes());
        packet
    }

    fn ipv6(next_header: u8, destination_port: u16) -> Vec<u8> {
        let mut packet = vec![0u8; 60];
        packet[0] = 0x60;
        packet[6] = next_header;
        packet[42..44].copy_from_slice(&destination_port.to_be_bytes());
        packet
    }

    #[test]
    fn filter_accepts_only_candidate_replies() {
        let ports = SourcePortRange { first: 40000, last: 40099 };
        let program = reply_filter(ports);
        let host = libc::PACKET_HOST;
        assert_ne!(run(&program, &ipv4_tcp(40000), host), 0);
        assert_ne!(run(&program, &ipv4_tcp(40099), host), 0);
        assert_eq!(run(&program, &ipv4_tcp(39999), host), 0);
        assert_eq!(run(&program, &ipv4_tcp(40100), host), 0);
        assert_eq!(run(&program, &ipv4_tcp(40050), libc::PACKET_OUTGOING), 0);
        let mut icmp = ipv4_tcp(0);
        icmp[9] = 1;
        assert_ne!(run(&program, &icmp, host), 0);
        let mut udp = ipv4_tcp(40050);
        udp[9] = 17;
        assert_ne!(run(&program, &udp, host), 0);
        let mut stray_udp = ipv4_tcp(53);
        stray_udp[9] = 17;
        assert_eq!(run(&program, &stray_udp, host), 0);
        let mut sctp = ipv4_tcp(40050);
        sctp[9] = 132;
        assert_eq!(run(&program, &sctp, host), 0);
        let mut options = ipv4_tcp(0);
        options[0] = 0x46; // 24-byte header: the port moves by four bytes
        options[26..28].copy_from_slice(&40010u16.to_be_bytes());
        assert_ne!(run(&program, &options, host), 0);
        assert_ne!(run(&program, &ipv6(6, 40010), host), 0);
        assert_eq!(run(&program, &ipv6(6, 22), host), 0);
        assert_ne!(run(&program, &ipv6(58, 0), host), 0);
        assert_ne!(run(&program, &ipv6(17, 40010), host), 0);
        assert_eq!(run(&program, &ipv6(17, 123), host), 0);
        assert_eq!(run(&program, &ipv6(132, 40010), host), 0);
        assert_eq!(run(&program, &[0x20; 40], host), 0);
    }
}
