//! Rate lists (`--rates 10k,50k,100k`) and ramps (`--ramp 10k..2M`, geometric steps).
//!
//! A rate is a whole number of packets per second with an optional `k` (thousand) or `M`
//! (million) suffix; a fraction is allowed before a suffix (`1.5M`). Zero, negative numbers,
//! other suffixes (`m` would be ambiguous), overflow, empty items, duplicates and a ramp that
//! does not go up are refused with the reason.

/// The largest rate accepted: a billion packets per second is beyond any NIC.
pub const MAX_RATE: u64 = 1_000_000_000;

/// A rejected rate specification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    /// Nothing where a rate was expected.
    #[error("empty rate; expected a rate such as 50000, 50k or 1.5M")]
    Empty,
    /// Not a number with an optional k/M suffix.
    #[error("{0:?} is not a rate; expected a number with an optional k or M suffix, such as 50k or 1.5M")]
    Malformed(String),
    /// Zero, or above [`MAX_RATE`].
    #[error("{0:?} is out of range; rates go from 1 to 1000M packets per second")]
    OutOfRange(String),
    /// The same rate twice in a list.
    #[error("{0} is listed twice")]
    Duplicate(u64),
    /// A ramp whose end is not above its start, or without `..`.
    #[error("{0:?} is not a ramp; expected FROM..TO with TO above FROM, such as 10k..2M")]
    BadRamp(String),
    /// A ramp step count outside 2..=64.
    #[error("{0} steps: a ramp takes 2 to 64 steps")]
    BadSteps(usize),
}

/// Parses one rate.
pub fn parse_rate(text: &str) -> Result<u64, RateError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(RateError::Empty);
    }
    let (number, multiplier) = match text.as_bytes()[text.len() - 1] {
        b'k' | b'K' => (&text[..text.len() - 1], 1_000.0),
        b'M' => (&text[..text.len() - 1], 1_000_000.0),
        b'0'..=b'9' => (text, 1.0),
        _ => return Err(RateError::Malformed(text.to_string())),
    };
    let valid = !number.is_empty()
        && number.bytes().all(|byte| byte.is_ascii_digit() || byte == b'.')
        && number.bytes().filter(|&byte| byte == b'.').count() <= 1
        && !number.starts_with('.')
        && !number.ends_with('.');
    if !valid || (multiplier == 1.0 && number.contains('.')) {
        return Err(RateError::Malformed(text.to_string()));
    }
    let value: f64 = number.parse().map_err(|_| RateError::Malformed(text.to_string()))?;
    let rate = (value * multiplier).round();
    if !(1.0..=MAX_RATE as f64).contains(&rate) {
        return Err(RateError::OutOfRange(text.to_string()));
    }
    Ok(rate as u64)
}

/// Parses a comma-separated list of rates, sorted ascending.
pub fn parse_rates(text: &str) -> Result<Vec<u64>, RateError> {
    let mut rates = Vec::new();
    for item in text.split(',') {
        let rate = parse_rate(item)?;
        if rates.contains(&rate) {
            return Err(RateError::Duplicate(rate));
        }
        rates.push(rate);
    }
    rates.sort_unstable();
    Ok(rates)
}

/// Parses `FROM..TO` into `steps` rates spaced geometrically (equal ratios, as loss grows with
/// the rate's order of magnitude), both ends included, rounded to three significant digits.
pub fn parse_ramp(text: &str, steps: usize) -> Result<Vec<u64>, RateError> {
    if !(2..=64).contains(&steps) {
        return Err(RateError::BadSteps(steps));
    }
    let Some((from, to)) = text.split_once("..") else {
        return Err(RateError::BadRamp(text.to_string()));
    };
    let (from, to) = (parse_rate(from)?, parse_rate(to)?);
    if to <= from {
        return Err(RateError::BadRamp(text.to_string()));
    }
    let ratio = (to as f64 / from as f64).powf(1.0 / (steps - 1) as f64);
    let mut rates: Vec<u64> = (0..steps)
        .map(|step| match step {
            0 => from,
            _ if step == steps - 1 => to,
            _ => three_significant_digits(from as f64 * ratio.powi(step as i32)),
        })
        .collect();
    rates.dedup();
    Ok(rates)
}

fn three_significant_digits(value: f64) -> u64 {
    let magnitude = 10f64.powi((value.log10().floor() as i32 - 2).max(0));
    ((value / magnitude).round() * magnitude) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_with_suffixes_parse_and_lists_sort() {
        assert_eq!(parse_rate("50000"), Ok(50_000));
        assert_eq!(parse_rate("50k"), Ok(50_000));
        assert_eq!(parse_rate("50K"), Ok(50_000));
        assert_eq!(parse_rate(" 1.5M "), Ok(1_500_000));
        assert_eq!(parse_rate("2M"), Ok(2_000_000));
        assert_eq!(parse_rate("0.5k"), Ok(500));
        assert_eq!(parse_rates("100k,10k,50k"), Ok(vec![10_000, 50_000, 100_000]));
    }

    #[test]
    fn bad_rates_are_refused_with_the_reason() {
        for (text, error) in [
            ("", RateError::Empty),
            ("  ", RateError::Empty),
            ("0", RateError::OutOfRange("0".into())),
            ("0k", RateError::OutOfRange("0k".into())),
            ("2000M", RateError::OutOfRange("2000M".into())),
            ("-5k", RateError::Malformed("-5k".into())),
            ("5m", RateError::Malformed("5m".into())),
            ("5G", RateError::Malformed("5G".into())),
            ("k", RateError::Malformed("k".into())),
            ("1.5", RateError::Malformed("1.5".into())),
            ("1..5k", RateError::Malformed("1..5k".into())),
            (".5k", RateError::Malformed(".5k".into())),
            ("ten", RateError::Malformed("ten".into())),
            ("99999999999999999999", RateError::OutOfRange("99999999999999999999".into())),
        ] {
            assert_eq!(parse_rate(text), Err(error), "{text:?}");
        }
        assert_eq!(parse_rates("10k,,20k"), Err(RateError::Empty));
        assert_eq!(parse_rates("10k,10000"), Err(RateError::Duplicate(10_000)));
        assert!(parse_rates("10k,fast").unwrap_err().to_string().contains("\"fast\" is not a rate"));
    }

    #[test]
    fn ramps_are_geometric_with_both_ends_and_refuse_nonsense() {
        assert_eq!(parse_ramp("10k..1M", 3), Ok(vec![10_000, 100_000, 1_000_000]));
        let ramp = parse_ramp("10k..2M", 8).unwrap();
        assert_eq!((ramp.len(), ramp[0], ramp[7]), (8, 10_000, 2_000_000));
        assert!(ramp.windows(2).all(|pair| pair[0] < pair[1]), "{ramp:?}");
        // Equal ratios, within rounding to three digits.
        let ratios: Vec<f64> = ramp.windows(2).map(|pair| pair[1] as f64 / pair[0] as f64).collect();
        assert!(ratios.iter().all(|ratio| (ratio - ratios[0]).abs() < 0.02), "{ratios:?}");
        assert_eq!(parse_ramp("1..3", 5), Ok(vec![1, 2, 3]), "tiny ramps lose duplicate steps");
        assert_eq!(parse_ramp("2M..10k", 8), Err(RateError::BadRamp("2M..10k".into())));
        assert_eq!(parse_ramp("10k..10k", 8), Err(RateError::BadRamp("10k..10k".into())));
        assert_eq!(parse_ramp("10k-2M", 8), Err(RateError::BadRamp("10k-2M".into())));
        assert_eq!(parse_ramp("10k..", 8), Err(RateError::Empty));
        assert_eq!(parse_ramp("10k..2M", 1), Err(RateError::BadSteps(1)));
        assert_eq!(parse_ramp("10k..2M", 65), Err(RateError::BadSteps(65)));
    }
}
