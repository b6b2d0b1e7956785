//! Durations as Kubernetes users write them (`300s`, `5m`, `1h30m`).

use std::time::Duration;

/// The schema pattern of a duration field.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h|d))+$";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{0}` is not a duration: write a number with a unit (ms, s, m, h, d), for example 300s, 5m or 1h30m"
)]
pub struct DurationError(pub String);

/// Parses `1h30m`, `300s`, `250ms`, `7d`. Zero is accepted; callers decide
/// whether it means anything.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(text.to_owned());
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            _ => return Err(err()),
        };
        let part = unit
            .checked_mul(u32::try_from(value).map_err(|_| err())?)
            .ok_or_else(err)?;
        total = total.checked_add(part).ok_or_else(err)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() {
        assert_eq!(parse_duration("300s"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in ["", "s", "10", "10x", "-5s", "1.5h", "5 m", "99999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }
}
