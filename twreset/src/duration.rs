//! The one duration grammar of every command and of the agent's config: `500ms`, `30s`, `2m`,
//! `1h`, compounds like `1m30s`, or a plain number of seconds.

use std::time::Duration;

/// Parse a duration; the error is one line fit for a usage message.
pub fn parse(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (examples: 30s, 500ms, 2m, 1m30s)");
    let too_long = || format!("{s:?} is too long");
    if s.is_empty() {
        return Err(bad());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().map(Duration::from_secs).map_err(|_| too_long());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| too_long())?;
        rest = &rest[digits..];
        let unit = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let ms_per = match &rest[..unit] {
            "ms" => 1,
            "s" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        let d = n.checked_mul(ms_per).map(Duration::from_millis).ok_or_else(too_long)?;
        total = total.checked_add(d).ok_or_else(too_long)?;
        rest = &rest[unit..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        assert_eq!(parse("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("2min"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "5 parsecs", "5x", "-1s", "1.5s", "ms5"] {
            assert!(parse(bad).unwrap_err().contains("not a duration"), "{bad}");
        }
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        for huge in ["99999999999999999999", "18446744073709551615m", "9999999999999999h", "18446744073709552s"] {
            assert!(parse(huge).is_err(), "{huge}");
        }
    }
}
