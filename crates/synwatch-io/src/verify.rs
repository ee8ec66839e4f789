//! Verification of open ports by a real handshake, after a scan.
//!
//! A SYN-ACK to a raw probe says that something answered, not that a service accepts
//! connections: stateless responders and some firewalls answer SYN-ACK for anything and reset
//! the handshake's last ACK, and a service may have gone since. [`verify_endpoints`] completes
//! a real handshake from the kernel (a non-blocking `connect()`, which needs no privilege) to
//! each endpoint it is given and nothing else, sends nothing, holds the connection a moment to
//! see whether the peer resets it, and closes it with `SO_LINGER` 0 (a RST: no TIME_WAIT on
//! either side).
//!
//! * Each attempt takes one token from the engine's global bucket, like a probe: verification
//!   never pushes the engine past its rate cap, and shares it with the running scans. An
//!   attempt that times out is made again, up to [`VerifyOptions::tries`] in all: on a lossy
//!   path a lost SYN is not a failed handshake.
//! * Verdicts ([`Verdict`]): `ok` (connected and not reset during the hold; a peer that closes
//!   politely, with a FIN, accepted the connection), `reset` (connected, then reset at once:
//!   the SYN-ACK was not a listener's), `refused` (RST to the SYN: no
//!   listener now), `timeout` (no answer in time), `unreachable` (an ICMP error or no route).
//! * SYN proxies and tarpits complete handshakes themselves, so they pass verification; the
//!   canaries catch them (see `synwatch_engine::evidence`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use std::sync::Arc;

use crate::shared::Shared;

/// Verifies endpoints under an engine's rate cap from any thread (see
/// [`crate::Engine::verifier`]).
#[derive(Clone)]
pub struct Verifier {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Verifier")
    }
}

impl Verifier {
    /// Verifies `endpoints` (see [`verify_endpoints`]).
    pub fn verify(&self, endpoints: &[(IpAddr, u16)], options: VerifyOptions) -> io::Result<Vec<Verification>> {
        verify_endpoints(&self.shared, endpoints, options)
    }
}

/// What a verification found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// The handshake completed and the peer kept the connection through the hold, or closed
    /// it politely.
    Ok,
    /// The handshake completed, then the peer reset it.
    Reset,
    /// The peer answered the SYN with a RST.
    Refused,
    /// No answer within the timeout.
    Timeout,
    /// An ICMP error, no route, or a local firewall.
    Unreachable,
}

impl Verdict {
    /// The verdict as outputs write it.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Reset => "reset",
            Verdict::Refused => "refused",
            Verdict::Timeout => "timeout",
            Verdict::Unreachable => "unreachable",
        }
    }

    /// The verdict for a name written by [`Verdict::name`].
    pub fn from_name(name: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|verdict| verdict.name() == name)
    }

    /// Every verdict, in the order outputs list them.
    pub const ALL: [Verdict; 5] =
        [Verdict::Ok, Verdict::Reset, Verdict::Refused, Verdict::Timeout, Verdict::Unreachable];
}

/// How verification runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyOptions {
    /// How long a connect() may take.
    pub connect_timeout: Duration,
    /// How long a completed connection is held to see whether the peer resets it.
    pub hold: Duration,
    /// Attempts open at once at most.
    pub max_inflight: usize,
    /// Attempts per endpoint: one that timed out is tried again, up to this many in all (a
    /// lost SYN or SYN-ACK is not a failed handshake).
    pub tries: u32,
}

impl VerifyOptions {
    /// Options from a scan's learned timeout (its last round or wait timeout) and smoothed
    /// round trip: twice the timeout to connect (0.2 to 5 s), and twice the round trip for the
    /// hold (20 ms to 1 s), so that a reset sent on the handshake's last ACK arrives in time.
    pub fn from_timing(timeout: Option<Duration>, srtt: Option<Duration>) -> VerifyOptions {
        let timeout = timeout.unwrap_or(Duration::from_secs(1));
        let srtt = srtt.unwrap_or(Duration::from_millis(100));
        VerifyOptions {
            connect_timeout: (timeout * 2).clamp(Duration::from_millis(200), Duration::from_secs(5)),
            hold: (srtt * 2).clamp(Duration::from_millis(20), Duration::from_secs(1)),
            max_inflight: 512,
            tries: 3,
        }
    }
}

/// One endpoint's verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verification {
    /// The endpoint's address.
    pub address: IpAddr,
    /// Its port.
    pub port: u16,
    /// What the handshake found.
    pub verdict: Verdict,
}

enum Phase {
    Connecting { until: Duration },
    Holding { until: Duration },
}

struct Attempt {
    socket: Socket,
    endpoint: usize,
    phase: Phase,
}

fn verdict_of_error(error: &io::Error) -> Verdict {
    match error.raw_os_error() {
        Some(libc::ECONNREFUSED) => Verdict::Refused,
        Some(libc::ECONNRESET | libc::EPIPE) => Verdict::Reset,
        Some(libc::ETIMEDOUT) => Verdict::Timeout,
        _ => Verdict::Unreachable,
    }
}

/// Verifies `endpoints` in order (see the module documentation), on the caller's thread; the
/// answer holds one verification per endpoint, in the same order.
pub(crate) fn verify_endpoints(
    shared: &Shared,
    endpoints: &[(IpAddr, u16)],
    options: VerifyOptions,
) -> io::Result<Vec<Verification>> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?;
    let mut verdicts: Vec<Option<Verdict>> = vec![None; endpoints.len()];
    let mut slots: Vec<Option<Attempt>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut next = 0usize;
    // Endpoints whose attempt timed out, to try again, and each endpoint's attempts so far.
    let mut again: Vec<usize> = Vec::new();
    let mut tries = vec![0u32; endpoints.len()];
    let mut inflight = 0usize;
    let max_inflight = options.max_inflight.max(1);
    let mut events = vec![EpollEvent::empty(); 256];
    while next < endpoints.len() || !again.is_empty() || inflight > 0 {
        let now = shared.now();
        // Open new attempts, one token each.
        let waiting = endpoints.len() - next + again.len();
        if waiting > 0 && inflight < max_inflight {
            let want = waiting.min(max_inflight - inflight).min(256) as u32;
            let granted = shared.bucket.lock().take(now, want);
            for _ in 0..granted {
                let endpoint = match again.pop() {
                    Some(endpoint) => endpoint,
                    None => {
                        next += 1;
                        next - 1
                    }
                };
                tries[endpoint] += 1;
                let (address, port) = endpoints[endpoint];
                match start(&epoll, &mut slots, &mut free, endpoint, SocketAddr::new(address, port), now, options) {
                    Ok(()) => inflight += 1,
                    Err(verdict) => verdicts[endpoint] = Some(verdict),
                }
                shared.counters.packets_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        // Expire connects and finish holds.
        for (slot, entry) in slots.iter_mut().enumerate() {
            let due = match entry {
                Some(Attempt { phase: Phase::Connecting { until } | Phase::Holding { until }, .. }) => *until <= now,
                None => false,
            };
            if due && let Some(attempt) = entry.take() {
                let verdict = match attempt.phase {
                    Phase::Connecting { .. } => Verdict::Timeout,
                    Phase::Holding { .. } => Verdict::Ok,
                };
                if verdict == Verdict::Timeout && tries[attempt.endpoint] < options.tries {
                    again.push(attempt.endpoint);
                } else {
                    verdicts[attempt.endpoint] = Some(verdict);
                }
                let _ = epoll.delete(&attempt.socket);
                free.push(slot);
                inflight -= 1;
            }
        }
        if next >= endpoints.len() && again.is_empty() && inflight == 0 {
            break;
        }
        // Wait for events until the next deadline or token.
        let mut wake = slots
            .iter()
            .flatten()
            .map(|attempt| match attempt.phase {
                Phase::Connecting { until } | Phase::Holding { until } => until,
            })
            .min()
            .unwrap_or(now + Duration::from_millis(50));
        if (next < endpoints.len() || !again.is_empty()) && inflight < max_inflight {
            wake = wake.min(now + shared.bucket.lock().time_until_token(now).max(Duration::from_micros(100)));
        }
        let millis = wake.saturating_sub(now).as_millis().clamp(1, 100) as u16;
        let ready = epoll.wait(&mut events, EpollTimeout::from(millis)).unwrap_or(0);
        let now = shared.now();
        for event in &events[..ready] {
            let slot = event.data() as usize;
            let flags = event.events();
            let Some(attempt) = slots.get_mut(slot).and_then(Option::as_mut) else { continue };
            // A peer that closes the connection politely (a FIN: the service accepted it and
            // hung up, as some do at once) accepted it; only an error (a RST) fails it.
            let closed_politely = flags.contains(EpollFlags::EPOLLRDHUP) && !flags.contains(EpollFlags::EPOLLERR);
            let finished = match attempt.phase {
                Phase::Connecting { .. } => match attempt.socket.take_error() {
                    Ok(None) if closed_politely => Some(Verdict::Ok),
                    Ok(None) if !flags.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) => {
                        attempt.phase = Phase::Holding { until: now + options.hold };
                        let interest = EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
                        let _ = epoll.modify(&attempt.socket, &mut EpollEvent::new(interest, slot as u64));
                        None
                    }
                    Ok(None) => Some(Verdict::Reset),
                    Ok(Some(error)) | Err(error) => Some(verdict_of_error(&error)),
                },
                Phase::Holding { .. } => Some(match attempt.socket.take_error() {
                    Ok(Some(error)) => verdict_of_error(&error),
                    Ok(None) if closed_politely => Verdict::Ok,
                    _ => Verdict::Reset,
                }),
            };
            if let Some(verdict) = finished
                && let Some(attempt) = slots[slot].take()
            {
                verdicts[attempt.endpoint] = Some(verdict);
                let _ = epoll.delete(&attempt.socket);
                free.push(slot);
                inflight -= 1;
            }
        }
    }
    Ok(endpoints
        .iter()
        .zip(verdicts)
        .map(|(&(address, port), verdict)| Verification { address, port, verdict: verdict.unwrap_or(Verdict::Timeout) })
        .collect())
}

/// Starts one attempt; an immediate outcome is returned as the error.
fn start(
    epoll: &Epoll,
    slots: &mut Vec<Option<Attempt>>,
    free: &mut Vec<usize>,
    endpoint: usize,
    target: SocketAddr,
    now: Duration,
    options: VerifyOptions,
) -> Result<(), Verdict> {
    let socket = Socket::new(Domain::for_address(target), Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))
        .map_err(|error| verdict_of_error(&error))?;
    // Closing sends a RST: nothing lingers on either side.
    let _ = socket.set_linger(Some(Duration::ZERO));
    match socket.connect(&SockAddr::from(target)) {
        Ok(()) => {}
        Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(error) => return Err(verdict_of_error(&error)),
    }
    let slot = free.pop().unwrap_or_else(|| {
        slots.push(None);
        slots.len() - 1
    });
    let interest = EpollFlags::EPOLLOUT | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
    if epoll.add(&socket, EpollEvent::new(interest, slot as u64)).is_err() {
        free.push(slot);
        return Err(Verdict::Unreachable);
    }
    slots[slot] = Some(Attempt { socket, endpoint, phase: Phase::Connecting { until: now + options.connect_timeout } });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_give_the_documented_verdicts() {
        let verdict = |code| verdict_of_error(&io::Error::from_raw_os_error(code));
        assert_eq!(verdict(libc::ECONNREFUSED), Verdict::Refused);
        assert_eq!(verdict(libc::ECONNRESET), Verdict::Reset);
        assert_eq!(verdict(libc::ETIMEDOUT), Verdict::Timeout);
        assert_eq!(verdict(libc::EHOSTUNREACH), Verdict::Unreachable);
        assert_eq!(verdict(libc::ENETUNREACH), Verdict::Unreachable);
    }

    #[test]
    fn options_follow_the_learned_timing_within_bounds() {
        let options = VerifyOptions::from_timing(Some(Duration::from_millis(300)), Some(Duration::from_millis(40)));
        assert_eq!((options.connect_timeout, options.hold), (Duration::from_millis(600), Duration::from_millis(80)));
        let fast = VerifyOptions::from_timing(Some(Duration::from_millis(10)), Some(Duration::from_micros(50)));
        assert_eq!((fast.connect_timeout, fast.hold), (Duration::from_millis(200), Duration::from_millis(20)));
        let slow = VerifyOptions::from_timing(Some(Duration::from_secs(10)), Some(Duration::from_secs(3)));
        assert_eq!((slow.connect_timeout, slow.hold), (Duration::from_secs(5), Duration::from_secs(1)));
    }
}
