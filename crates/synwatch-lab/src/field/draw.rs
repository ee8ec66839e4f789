//! Seeded draws: every random choice of the field lab is a hash of the model's seed and what is
//! being decided (a host, a (host, port), a packet's sequence number), so the same seed gives
//! the same network whatever order the probes arrive in.
//!
//! Written out rather than taken from `rand`: the draws must be stateless functions of their
//! inputs (a per-host RTT is the same on every call), which is a hash, not a generator; and
//! `rand`'s small generators do not promise the same stream across versions, which would change
//! a committed ground truth.

use std::net::IpAddr;

/// A well-mixed 64-bit hash of `value` (the SplitMix64 finaliser).
pub(crate) fn mix(mut value: u64) -> u64 {
    value = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

/// What a draw decides; each purpose is its own independent stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    HostKind = 1,
    HostRtt = 2,
    HostRttSecond = 3,
    PortState = 4,
    Jitter = 5,
    ForwardLoss = 6,
    ReverseLoss = 7,
    Duplicate = 8,
    Late = 9,
    InitialSequence = 10,
    /// Moves a direction's Gilbert–Elliott chain (its loss draw is `ForwardLoss` or
    /// `ReverseLoss`).
    ForwardLossState = 11,
    ReverseLossState = 12,
    UdpPortState = 13,
    /// The port a service that answers from a new one (TFTP) answers from.
    UdpAnswerPort = 14,
}

fn address_bits(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(address) => u128::from(u32::from(address)),
        // The family is folded in so an IPv4 address and the IPv6 address with the same bits
        // draw differently.
        IpAddr::V6(address) => u128::from(address) ^ (1u128 << 127),
    }
}

/// A hash of the seed, the purpose, an address and one more number (a port, a packet count).
pub(crate) fn hash(seed: u64, purpose: Purpose, address: IpAddr, extra: u64) -> u64 {
    let bits = address_bits(address);
    let mut state = mix(seed ^ (purpose as u64).wrapping_mul(0xa076_1d64_78bd_642f));
    state = mix(state ^ bits as u64);
    state = mix(state ^ (bits >> 64) as u64);
    mix(state ^ extra)
}

/// A uniform draw in [0, 1).
pub(crate) fn unit(seed: u64, purpose: Purpose, address: IpAddr, extra: u64) -> f64 {
    (hash(seed, purpose, address, extra) >> 11) as f64 / (1u64 << 53) as f64
}

/// A standard normal draw (Box–Muller on two independent uniform draws).
pub(crate) fn normal(seed: u64, first: Purpose, second: Purpose, address: IpAddr, extra: u64) -> f64 {
    // 1 - u is in (0, 1], so the logarithm is finite.
    let radius = (-2.0 * (1.0 - unit(seed, first, address, extra)).ln()).sqrt();
    let angle = 2.0 * std::f64::consts::PI * unit(seed, second, address, extra);
    radius * angle.cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_uniform_independent_and_repeatable() {
        let address: IpAddr = "198.18.0.1".parse().unwrap();
        assert_eq!(unit(7, Purpose::PortState, address, 80), unit(7, Purpose::PortState, address, 80));
        assert_ne!(unit(7, Purpose::PortState, address, 80), unit(8, Purpose::PortState, address, 80));
        assert_ne!(unit(7, Purpose::PortState, address, 80), unit(7, Purpose::Jitter, address, 80));
        let draws: Vec<f64> = (0..100_000).map(|n| unit(1, Purpose::Jitter, address, n)).collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        assert!(draws.iter().all(|draw| (0.0..1.0).contains(draw)));
        let below_tenth = draws.iter().filter(|draw| **draw < 0.1).count();
        assert!((9_000..11_000).contains(&below_tenth), "{below_tenth}");
        let normals: Vec<f64> =
            (0..100_000).map(|n| normal(1, Purpose::HostRtt, Purpose::HostRttSecond, address, n)).collect();
        let mean = normals.iter().sum::<f64>() / normals.len() as f64;
        let variance = normals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / normals.len() as f64;
        assert!(mean.abs() < 0.02 && (variance - 1.0).abs() < 0.03, "mean {mean} variance {variance}");
    }
}
