//! Durations as Kubernetes users write them (`300s`, `5m`, `1h30m`): in
//! resources, and in the flags of the token server, operator and sidecar.

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

/// A duration flag: what [`parse_duration`] reads, or bare seconds (`300`),
/// which the operator's and the sidecar's flags took before they took units.
pub fn parse_flag(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return trimmed
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| DurationError(text.to_owned()).to_string());
    }
    parse_duration(text).map_err(|e| e.to_string())
}

/// [`parse_flag`], refusing zero: a zero timeout or period would fire at once.
pub fn parse_positive_flag(text: &str) -> Result<Duration, String> {
    match parse_flag(text)? {
        d if d.is_zero() => Err(format!("`{text}`: give more than zero, for example 1s")),
        d => Ok(d),
    }
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

    #[test]
    fn flags_take_units_and_bare_seconds() {
        assert_eq!(parse_flag("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_flag("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_flag("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_flag("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_flag("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_flag("0"), Ok(Duration::ZERO));
        for bad in ["", "5 m", "-1", "300ss", "1.5h", "99999999999999999999"] {
            let err = parse_flag(bad).unwrap_err();
            assert!(err.contains("for example 300s"), "{bad}: {err}");
        }
        assert_eq!(parse_positive_flag("1s"), Ok(Duration::from_secs(1)));
        assert!(parse_positive_flag("0s").is_err() && parse_positive_flag("0").is_err());
    }
}
