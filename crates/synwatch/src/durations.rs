//! Durations on the command line: a bare number is seconds (`--wait 2`, `--wait 0.5`), as
//! masscan and zmap take them, and humantime's units work as well (`500ms`, `1m30s`). Config
//! files keep requiring units (the exporter's parser says so), because a file outlives the
//! memory of what its bare numbers meant.

use std::time::Duration;

use synwatch_engine::TimeSetting;

/// Parses a command-line duration: seconds when it is a plain number, else humantime.
pub fn parse_cli_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if let Ok(seconds) = trimmed.parse::<f64>() {
        // `Duration::try_from_secs_f64` rejects negatives, NaN and overflow; ten years is
        // more than any wait, gap or timeout can mean.
        return match Duration::try_from_secs_f64(seconds) {
            Ok(duration) if seconds <= 315_360_000.0 => Ok(duration),
            _ => Err(format!("{text:?}: expected seconds from 0 to 315360000, or a duration such as 500ms or 2s")),
        };
    }
    humantime::parse_duration(trimmed).map_err(|error| {
        format!("{text:?} is not a duration: give seconds (2, 0.5) or units (500ms, 2s, 1m) ({error})")
    })
}

/// Parses `auto` (learned from the network) or a command-line duration (fixed).
pub fn parse_time_setting(text: &str) -> Result<TimeSetting, String> {
    if text.trim() == "auto" {
        return Ok(TimeSetting::Auto);
    }
    parse_cli_duration(text).map(TimeSetting::Fixed).map_err(|error| format!("{error}, or auto"))
}

/// Parses a duration that must be above zero (a timeout bound).
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_cli_duration(text)? {
        duration if duration.is_zero() => Err(format!("{text:?}: must be above zero")),
        duration => Ok(duration),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_settings_are_auto_or_a_duration() {
        assert_eq!(parse_time_setting("auto"), Ok(TimeSetting::Auto));
        assert_eq!(parse_time_setting("250ms"), Ok(TimeSetting::Fixed(Duration::from_millis(250))));
        assert_eq!(parse_time_setting("2"), Ok(TimeSetting::Fixed(Duration::from_secs(2))));
        let error = parse_time_setting("automatic").unwrap_err();
        assert!(error.contains("or auto"), "{error}");
        assert!(parse_positive_duration("0").unwrap_err().contains("above zero"));
        assert_eq!(parse_positive_duration("50ms"), Ok(Duration::from_millis(50)));
    }

    #[test]
    fn bare_numbers_are_seconds_and_units_still_work() {
        assert_eq!(parse_cli_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_cli_duration("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_cli_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_cli_duration(" 3 "), Ok(Duration::from_secs(3)));
        assert_eq!(parse_cli_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_cli_duration("1m30s"), Ok(Duration::from_secs(90)));
    }

    #[test]
    fn bad_durations_say_why() {
        for bad in ["-1", "NaN", "inf", "1e30", "soon", "5 parsecs", ""] {
            let error = parse_cli_duration(bad).unwrap_err();
            assert!(error.contains("duration") || error.contains("seconds"), "{bad}: {error}");
        }
    }
}
