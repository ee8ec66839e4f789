//! The responder thread: the field lab's I/O. It enters the target namespace, opens an
//! AF_PACKET socket on the target side of the veth, and loops: wait (poll) until a frame
//! arrives or the next reply is due, read frames in batches (`recvmmsg`, 64 at a time) into the
//! [`Simulator`], write the replies due into frames and send them in batches (`sendmmsg`).
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
const FRAME_BUFFER: usize = 2048;
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
    // Room for bursts at a million frames per second while the thread is busy sending.
    set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 64 << 20, "SO_RCVBUFFORCE")?;
    set_option(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 16 << 20, "SO_SNDBUFFORCE")?;
    Ok(fd)
}

/// Buffers and message headers for one `recvmmsg` or `sendmmsg` batch.
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

    /// Receives up to a batch; returns how many frames came.
    fn receive(&mut self, fd: &OwnedFd) -> io::Result<usize> {
        for (header, iovec) in self.headers.iter_mut().zip(self.iovecs.iter_mut()) {
            iovec.iov_len = FRAME_BUFFER;
            header.msg_len = 0;
        }
        // SAFETY: every header points at its own live iovec and buffer of FRAME_BUFFER bytes.
        let count = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if count < 0 {
            let error = io::Error::last_os_error();
            return if error.kind() == io::ErrorKind::WouldBlock { Ok(0) } else { Err(error) };
        }
        let count = count as usize;
        for index in 0..count {
            self.lengths[index] = (self.headers[index].msg_len as usize).min(FRAME_BUFFER);
        }
        Ok(count)
    }

    fn frame(&self, index: usize) -> &[u8] {
        &self.buffers[index][..self.lengths[index]]
    }

    /// The next free buffer to write a frame into, or `None` when the batch is full.
    fn next_buffer(&mut self) -> Option<&mut [u8]> {
        (self.filled < BATCH).then(|| &mut self.buffers[self.filled][..MAX_REPLY_LEN.max(1)])
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
        let namespace_file = std::fs::File::open(format!("/run/netns/{namespace}"))?;
        let (ready_sender, ready) = std::sync::mpsc::channel::<io::Result<()>>();
        let started = Instant::now();
        let thread = {
            let (simulator, stop, send_errors) = (Arc::clone(&simulator), Arc::clone(&stop), Arc::clone(&send_errors));
            let interface = interface.to_string();
            std::thread::Builder::new().name("field-responder".into()).spawn(move || {
                let opened = setns(&namespace_file, CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)
                    .and_then(|()| packet_socket(&interface));
                let fd = match opened {
                    Ok(fd) => {
                        let _ = ready_sender.send(Ok(()));
                        fd
                    }
                    Err(error) => {
                        let _ = ready_sender.send(Err(io::Error::new(error.kind(), error.to_string())));
                        return Err(error);
                    }
                };
                serve(&fd, &simulator, &stop, &send_errors, started)
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
        Ok(Responder { simulator, stop, thread: Some(thread), started, send_errors })
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

fn serve(
    fd: &OwnedFd,
    simulator: &Mutex<Simulator>,
    stop: &AtomicBool,
    send_errors: &std::sync::atomic::AtomicU64,
    started: Instant,
) -> io::Result<()> {
    let mut receive = Batch::new();
    let mut transmit = Batch::new();
    while !stop.load(Ordering::Acquire) {
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
        let mut simulator = simulator.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Up to 16 batches before sending, so replies are not held up by a flood of probes.
        for _ in 0..16 {
            let count = receive.receive(fd)?;
            let now = started.elapsed();
            for index in 0..count {
                simulator.handle_frame(now, receive.frame(index));
            }
            if count < BATCH {
                break;
            }
        }
        let mut failed = 0;
        simulator.poll_transmit(started.elapsed(), |reply| {
            if transmit.next_buffer().is_none() {
                failed += transmit.flush(fd);
            }
            let buffer = transmit.next_buffer().expect("flushed above");
            if let Some(length) = write_reply(reply, buffer) {
                transmit.commit(length);
            }
        });
        failed += transmit.flush(fd);
        if failed > 0 {
            send_errors.fetch_add(failed, Ordering::Relaxed);
        }
    }
    Ok(())
}
