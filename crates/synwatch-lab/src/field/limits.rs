//! The simulated network's stateful parts: token buckets (ICMP error limits, the per-source
//! firewall) and the two-state Gilbert–Elliott loss chain. Each takes the time or the draw as
//! an argument and reads no clock.

use std::time::Duration;

use super::model::{Loss, RateLimit};

/// A token bucket over simulated time.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last: Duration,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn full(limit: RateLimit, now: Duration) -> Bucket {
        Bucket { tokens: limit.burst, last: now }
    }

    /// Takes a token at `now` if there is one.
    pub fn take(&mut self, limit: RateLimit, now: Duration) -> bool {
        let elapsed = now.saturating_sub(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * limit.per_second).min(limit.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One direction's loss state.
#[derive(Debug, Clone, Copy, Default)]
pub struct LossChain {
    bad: bool,
}

impl LossChain {
    /// Whether the next packet is lost, from two uniform draws in [0, 1) (one moves the chain,
    /// one decides the loss).
    pub fn lose(&mut self, loss: &Loss, move_draw: f64, loss_draw: f64) -> bool {
        match *loss {
            Loss::None => false,
            Loss::Random { percent } => loss_draw * 100.0 < percent,
            Loss::Bursty { good_to_bad_percent, bad_to_good_percent, loss_good_percent, loss_bad_percent } => {
                let switch = if self.bad { bad_to_good_percent } else { good_to_bad_percent };
                if move_draw * 100.0 < switch {
                    self.bad = !self.bad;
                }
                let percent = if self.bad { loss_bad_percent } else { loss_good_percent };
                loss_draw * 100.0 < percent
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::draw::{Purpose, unit};

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let limit = RateLimit { per_second: 1000.0, burst: 50.0 };
        let mut bucket = Bucket::full(limit, Duration::ZERO);
        let burst = (0..200).filter(|_| bucket.take(limit, Duration::ZERO)).count();
        assert_eq!(burst, 50);
        // One second at 10,000 attempts/s: 1,000 more tokens, give or take the last one.
        let allowed = (1..=10_000).filter(|n| bucket.take(limit, Duration::from_micros(100 * n))).count();
        assert!((999..=1001).contains(&allowed), "{allowed}");
    }

    #[test]
    fn bursty_loss_has_its_mean_and_comes_in_runs() {
        let loss = Loss::Bursty {
            good_to_bad_percent: 2.0,
            bad_to_good_percent: 30.0,
            loss_good_percent: 0.3,
            loss_bad_percent: 75.0,
        };
        let address = "198.18.0.1".parse().unwrap();
        let mut chain = LossChain::default();
        let lost: Vec<bool> = (0..400_000)
            .map(|n| chain.lose(&loss, unit(3, Purpose::ForwardLoss, address, n), unit(3, Purpose::Late, address, n)))
            .collect();
        let share = lost.iter().filter(|lost| **lost).count() as f64 / lost.len() as f64 * 100.0;
        assert!((share - loss.mean_percent()).abs() < 0.4, "{share} against {}", loss.mean_percent());
        // Bursty: a loss is followed by another far more often than the mean says.
        let pairs = lost.windows(2).filter(|pair| pair[0]).count() as f64;
        let both = lost.windows(2).filter(|pair| pair[0] && pair[1]).count() as f64;
        assert!(both / pairs > 0.4, "P(loss | loss) = {}", both / pairs);
        let random = Loss::Random { percent: 10.0 };
        let lost =
            (0..100_000).filter(|n| chain.lose(&random, 0.0, unit(4, Purpose::ForwardLoss, address, *n))).count();
        assert!((9_500..10_500).contains(&lost), "{lost}");
    }
}
