//! The responder thread: the field lab's I/O. It enters the target namespace, opens an
//! AF_PACKET socket on the target side of the veth, and loops: wait (poll) until a frame
//! arrives or the next reply is due, read every frame the kernel has put in the socket's RX
//! ring (`PACKET_RX_RING`, TPACKET_V2: no copy and no system call per frame) into the
//! [`Simulator`], write the replies due into frames and send them in batches (`sendmmsg`).
//! TPACKET_V2 rather than V3: V3 hands frames over a block at a time, after up to a
//! millisecond, which would add a millisecond to the `lan` profile's 0.2 ms.
//!
//! The target namespace's kernel owns none of the simulated addresses, and an nftables rule
//! there drops their packets before routing (the capture sees them first), so the kernel never
//! answers for them (it would send ICMP host unreachable, as a host that does not forward does).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

use super::packets::{MAX_REPLY_LEN, write_reply};
use super::simulator::Simulator;

const BATCH: usize = 64;
/// How long the responder lets frames gather after a small round.
const GATHER: Duration = Duration::from_micros(50);
/// A send buffer holds the longest reply.
const FRAME_BUFFER: usize = MAX_REPLY_LEN;
/// `PACKET_IGNORE_OUTGOING` (Linux 4.20): the socket does not see the frames it sends.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// A running responder.
#[derive(Debug)]
pub struct Responder {
    simulator: Arc<Mutex<Simulator>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
    started: Instant,
    send_errors: Arc<std::sync::atomic::AtomicU64>,
    ring_drops: Arc<std::sync::atomic::AtomicU64>,
    paused: Arc<AtomicBool>,
}

fn check(result: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if result < 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(error.kind(), format!("{what}: {error}")));
    }
    Ok(result)
}

fn set_option(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: libc::c_int, what: &str) -> io::Result<()> {
    // SAFETY: the option value is a c_int that outlives the call.
    let result = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(result, what).map(|_| ())
}

/// An AF_PACKET socket bound to `interface` (in the calling thread's namespace).
fn packet_socket(interface: &str) -> io::Result<OwnedFd> {
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket creation; the descriptor is owned at once.
    let raw = check(
        unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, protocol.into())
        },
        "socket(AF_PACKET)",
    )?;
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let index = nix::net::if_::if_nametoindex(interface).map_err(io::Error::from)?;
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol;
    address.sll_ifindex = index as i32;
    // SAFETY: the address is a valid sockaddr_ll of the size given.
    let bound = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&address as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    check(bound, "bind(AF_PACKET)")?;
    set_option(&fd, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1, "PACKET_IGNORE_OUTGOING")?;
    // Frames arrive through the RX ring (its size is the receive room); sends get room for
    // bursts of replies.
    set_option(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 16 << 20, "SO_SNDBUFFORCE")?;
    Ok(fd)
}

/// The socket's receive ring: `FRAME_COUNT` slots of `FRAME_SLOT` bytes the kernel fills and
/// hands over one by one through each slot's status word.
struct ReceiveRing {
    map: *mut u8,
    length: usize,
    next: usize,
}

/// A slot holds the kernel's header and a frame of up to ~440 bytes: every SYN probe (an IPv6
/// SYN with options is 94 bytes) and every built-in UDP probe but QUIC's padded 1,200 bytes
/// (SIP's OPTIONS, the longest of the rest, is about 300). A longer frame is cut short: a TCP
/// one is not taken for a probe, a UDP one is (see [`Simulator::handle_captured_frame`]).
/// 262,144 slots (128 MiB) hold more than a second of probes at the fastest rate the benches
/// ask for.
const FRAME_SLOT: usize = 512;
const RING_BLOCK: usize = 1 << 22;
const RING_BLOCKS: usize = 32;
const FRAME_COUNT: usize = RING_BLOCK / FRAME_SLOT * RING_BLOCKS;
/// `TPACKET_V2` of `enum tpacket_versions`.
const TPACKET_V2: libc::c_int = 1;

impl ReceiveRing {
    fn new(fd: &OwnedFd) -> io::Result<ReceiveRing> {
        set_option(fd, libc::SOL_PACKET, libc::PACKET_VERSION, TPACKET_V2, "PACKET_VERSION")?;
        let request = libc::tpacket_req {
            tp_block_size: RING_BLOCK as u32,
            tp_block_nr: RING_BLOCKS as u32,
            tp_frame_size: FRAME_SLOT as u32,
            tp_frame_nr: FRAME_COUNT as u32,
        };
        // SAFETY: the request is a valid tpacket_req that outlives the call.
        let result = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_RX_RING,
                (&request as *const libc::tpacket_req).cast(),
                std::mem::size_of::<libc::tpacket_req>() as libc::socklen_t,
            )
        };
        check(result, "PACKET_RX_RING")?;
        let length = RING_BLOCK * RING_BLOCKS;
        // SAFETY: maps the ring the kernel just made for this socket; unmapped in Drop.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                length,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::other(format!("mmap of the RX ring: {}", io::Error::last_os_error())));
        }
        Ok(ReceiveRing { map: map.cast(), length, next: 0 })
    }

    /// Hands every frame the kernel has filled, in order, to `each` (at most `limit`) with
    /// its length on the wire (more than the slice when it was cut to the slot), giving each
    /// slot back after; returns how many there were.
    fn drain(&mut self, limit: usize, mut each: impl FnMut(&[u8], usize)) -> usize {
        let mut count = 0;
        while count < limit {
            // SAFETY: `next` < FRAME_COUNT, so the slot lies inside the mapping, and a slot
            // starts with its tpacket2_hdr (the kernel's layout for TPACKET_V2).
            let slot = unsafe { self.map.add(self.next * FRAME_SLOT) };
            let header = slot.cast::<libc::tpacket2_hdr>();
            // SAFETY: the status word is shared with the kernel; read it volatile.
            let status = unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*header).tp_status)) };
            if status & libc::TP_STATUS_USER == 0 {
                break;
            }
            std::sync::atomic::fence(Ordering::Acquire);
            // SAFETY: the kernel filled the header before handing the slot over.
            let (mac, snaplen, wire_len) =
                unsafe { (usize::from((*header).tp_mac), (*header).tp_snaplen as usize, (*header).tp_len as usize) };
            // The kernel keeps the frame inside its slot; checked anyway, so a bad header can
            // only drop a frame.
            if mac + snaplen <= FRAME_SLOT {
                // SAFETY: inside the slot, just checked; the kernel does not write a slot it
                // has handed over until it is given back below.
                each(unsafe { std::slice::from_raw_parts(slot.add(mac), snaplen) }, wire_len.max(snaplen));
            }
            std::sync::atomic::fence(Ordering::Release);
            // SAFETY: gives the slot back to the kernel.
            unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*header).tp_status), libc::TP_STATUS_KERNEL) };
            self.next = (self.next + 1) % FRAME_COUNT;
            count += 1;
        }
        count
    }
}

impl Drop for ReceiveRing {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.map.cast(), self.length) };
    }
}

/// Buffers and message headers for one `sendmmsg` batch.
struct Batch {
    buffers: Vec<[u8; FRAME_BUFFER]>,
    lengths: [usize; BATCH],
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    filled: usize,
}

impl Batch {
    fn new() -> Batch {
        let mut buffers = vec![[0u8; FRAME_BUFFER]; BATCH];
        let iovecs: Vec<libc::iovec> = buffers
            .iter_mut()
            .map(|buffer| libc::iovec { iov_base: buffer.as_mut_ptr().cast(), iov_len: FRAME_BUFFER })
            .collect();
        // SAFETY: mmsghdr is plain old data; all-zero is valid (pointers set below).
        let headers = (0..BATCH).map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() }).collect();
        let mut batch = Batch { buffers, lengths: [0; BATCH], iovecs, headers, filled: 0 };
        batch.point_headers();
        batch
    }

    fn point_headers(&mut self) {
        for (header, iovec) in self.headers.iter_mut().zip(self.iovecs.iter_mut()) {
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
        }
    }

    /// The next free buffer to write a frame into, or `None` when the batch is full.
    fn next_buffer(&mut self) -> Option<&mut [u8]> {
        (self.filled < BATCH).then(|| &mut self.buffers[self.filled][..])
    }

    fn commit(&mut self, length: usize) {
        self.lengths[self.filled] = length;
        self.filled += 1;
    }

    /// Sends the filled frames; returns how many could not be sent.
    fn flush(&mut self, fd: &OwnedFd) -> u64 {
        let mut sent = 0;
        let mut attempts = 0;
        while sent < self.filled {
            for index in sent..self.filled {
                self.iovecs[index].iov_len = self.lengths[index];
            }
            // SAFETY: headers sent..filled point at their live iovecs and buffers.
            let count = unsafe {
                libc::sendmmsg(fd.as_raw_fd(), self.headers[sent..].as_mut_ptr(), (self.filled - sent) as u32, 0)
            };
            if count > 0 {
                sent += count as usize;
                continue;
            }
            attempts += 1;
            if attempts > 100 {
                break;
            }
            // The device queue is full (ENOBUFS or EAGAIN): let it drain.
            std::thread::sleep(Duration::from_micros(50));
        }
        let failed = (self.filled - sent) as u64;
        self.filled = 0;
        failed
    }
}

impl Responder {
    /// Starts a responder for `simulator` on `interface` inside the network namespace
    /// `namespace` (a name under /run/netns).
    pub fn start(namespace: &str, interface: &str, simulator: Simulator) -> io::Result<Responder> {
        let simulator = Arc::new(Mutex::new(simulator));
        let stop = Arc::new(AtomicBool::new(false));
        let send_errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ring_drops = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let paused = Arc::new(AtomicBool::new(false));
        let namespace_file = std::fs::File::open(format!("/run/netns/{namespace}"))?;
        let (ready_sender, ready) = std::sync::mpsc::channel::<io::Result<()>>();
        let started = Instant::now();
        let thread = {
            let (simulator, stop, pause) = (Arc::clone(&simulator), Arc::clone(&stop), Arc::clone(&paused));
            let counters = (Arc::clone(&send_errors), Arc::clone(&ring_drops));
            let interface = interface.to_string();
            std::thread::Builder::new().name("field-responder".into()).spawn(move || {
                // The ring is in place before the lab is ready: a frame that arrives before it is
                // queued on the socket, where the responder never reads.
                let opened = setns(&namespace_file, CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)
                    .and_then(|()| packet_socket(&interface))
                    .and_then(|fd| ReceiveRing::new(&fd).map(|ring| (fd, ring)));
                prefer_this_thread();
                let (fd, ring) = match opened {
                    Ok(opened) => {
                        let _ = ready_sender.send(Ok(()));
                        opened
                    }
                    Err(error) => {
                        let _ = ready_sender.send(Err(io::Error::new(error.kind(), error.to_string())));
                        return Err(error);
                    }
                };
                serve(&fd, ring, &simulator, (&stop, &pause), (&counters.0, &counters.1), started)
            })?
        };
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                let _ = thread.join();
                return Err(error);
            }
            Err(_) => return Err(io::Error::other("the responder thread ended before it was ready")),
        }
        Ok(Responder { simulator, stop, thread: Some(thread), started, send_errors, ring_drops, paused })
    }

    /// The simulator, for reading its counters and per-port SYN counts (the responder waits
    /// while it is held).
    pub fn simulator(&self) -> MutexGuard<'_, Simulator> {
        self.simulator.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Time since the responder started: the model's clock.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Replies that could not be sent (the device queue stayed full).
    pub fn send_errors(&self) -> u64 {
        self.send_errors.load(Ordering::Relaxed)
    }

    /// Frames the kernel dropped because the receive ring was full (the responder fell
    /// behind): probes the simulated network never saw.
    pub fn ring_drops(&self) -> u64 {
        self.ring_drops.load(Ordering::Relaxed)
    }

    /// Pauses or resumes the responder. Paused, it reads nothing: arriving frames wait in the
    /// receive ring (262,144 of them), so a benchmark can fill the ring and then time how fast
    /// the responder empties it, which is its capacity on one core with nothing else running.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
    }

    /// Frames the receive ring holds at most.
    pub const RING_FRAMES: usize = FRAME_COUNT;

    /// Stops the thread and returns how it ended.
    pub fn stop(mut self) -> io::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::Release);
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| io::Error::other("the responder thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Gives the responder a real-time priority (SCHED_FIFO 10) when the process may: the lab's
/// targets then keep up first and a CPU-starved scanner slows down itself, instead of the
/// network silently losing probes to a full receive ring. The thread sleeps whenever it has
/// nothing to do, so it never takes more than one core. Without the privilege it runs as it is.
fn prefer_this_thread() {
    let parameter = libc::sched_param { sched_priority: 10 };
    // SAFETY: changes only the calling thread's scheduling (pid 0 is the caller on Linux).
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &parameter) };
}

fn serve(
    fd: &OwnedFd,
    mut receive: ReceiveRing,
    simulator: &Mutex<Simulator>,
    (stop, paused): (&AtomicBool, &AtomicBool),
    (send_errors, ring_drops): (&std::sync::atomic::AtomicU64, &std::sync::atomic::AtomicU64),
    started: Instant,
) -> io::Result<()> {
    let mut transmit = Batch::new();
    while !stop.load(Ordering::Acquire) {
        if paused.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let received = {
            let mut simulator = simulator.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // Up to 1,024 frames before sending, so replies are not held up by a flood of
            // probes.
            let now = started.elapsed();
            let received = receive.drain(1024, |frame, wire_len| simulator.handle_captured_frame(now, frame, wire_len));
            let mut failed = 0;
            simulator.poll_transmit(started.elapsed(), |reply, answer| {
                if transmit.next_buffer().is_none() {
                    failed += transmit.flush(fd);
                }
                let buffer = transmit.next_buffer().expect("flushed above");
                if let Some(length) = write_reply(reply, answer, buffer) {
                    transmit.commit(length);
                }
            });
            failed += transmit.flush(fd);
            if failed > 0 {
                send_errors.fetch_add(failed, Ordering::Relaxed);
            }
            received
        };
        if received > 0 {
            ring_drops.fetch_add(take_ring_drops(fd), Ordering::Relaxed);
        }
        if received >= 1024 {
            // More is waiting: go round again at once.
            continue;
        }
        if received > 0 {
            // A few frames: let more gather before the next round. Every round costs a wake-up
            // and two system calls, so at high rates small rounds cost more than the frames;
            // 50 µs is a quarter of the lan profile's round trip.
            std::thread::sleep(GATHER);
            continue;
        }
        wait_for_work(fd, simulator, started)?;
    }
    ring_drops.fetch_add(take_ring_drops(fd), Ordering::Relaxed);
    Ok(())
}

/// Frames dropped since the last call (`PACKET_STATISTICS` resets its counts when read).
fn take_ring_drops(fd: &OwnedFd) -> u64 {
    let mut stats = libc::tpacket_stats { tp_packets: 0, tp_drops: 0 };
    let mut length = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `length` bytes into `stats`.
    let result = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut stats as *mut libc::tpacket_stats).cast(),
            &mut length,
        )
    };
    if result < 0 { 0 } else { u64::from(stats.tp_drops) }
}

/// Sleeps until a frame arrives or the next reply falls due (at most 10 ms, to see `stop`).
fn wait_for_work(fd: &OwnedFd, simulator: &Mutex<Simulator>, started: Instant) -> io::Result<()> {
    let now = started.elapsed();
    let wait = simulator
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .poll_timeout(now)
        .map_or(Duration::from_millis(10), |due| due.saturating_sub(now).min(Duration::from_millis(10)));
    let mut descriptor = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // Rounded up to whole milliseconds, so a wait shorter than one is not a busy loop (a
    // reply is at most a millisecond late, well under any profile's jitter) unless it is
    // due now.
    let timeout = if wait.is_zero() { 0 } else { wait.as_micros().div_ceil(1000) as libc::c_int };
    // SAFETY: one valid pollfd.
    let polled = unsafe { libc::poll(&mut descriptor, 1, timeout) };
    if polled < 0 {
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    if descriptor.revents & libc::POLLERR != 0 {
        // A failed send leaves an error on the socket, and poll() reports it at once until it
        // is read: read it, or the thread would spin.
        let mut error: libc::c_int = 0;
        let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the kernel writes one c_int into `error`.
        unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut error as *mut libc::c_int).cast(),
                &mut length,
            )
        };
    }
    Ok(())
}
