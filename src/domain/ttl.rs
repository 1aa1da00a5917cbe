//! Time-to-live written as `90s`, `30m`, `48h`, `14d`, `2w` or combinations such as `1h30m`.

use super::InvalidInput;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ttl(Duration);

impl Ttl {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let err = || {
            InvalidInput::new(
                "ttl",
                format!("{raw:?} is not a duration such as 30m, 48h, 14d or 1h30m"),
            )
        };
        let mut total: u64 = 0;
        let mut digits = String::new();
        for c in raw.trim().chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                'w' => 604_800,
                _ => return Err(err()),
            };
            let n: u64 = digits.parse().map_err(|_| err())?;
            total = n
                .checked_mul(unit)
                .and_then(|s| total.checked_add(s))
                .ok_or_else(err)?;
            digits.clear();
        }
        if !digits.is_empty() || total == 0 {
            return Err(err());
        }
        // chrono cannot add more than ~292 billion years; far beyond any sane max_ttl anyway.
        if total > 100 * 365 * 86_400 {
            return Err(err());
        }
        Ok(Self(Duration::from_secs(total)))
    }

    pub fn from_duration(d: Duration) -> Self {
        Self(d)
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }

    pub fn as_chrono(self) -> chrono::Duration {
        chrono::Duration::seconds(self.0.as_secs() as i64)
    }
}

impl std::fmt::Display for Ttl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0.as_secs();
        match s {
            s if s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
            s if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            s if s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(Ttl::parse("48h").unwrap().as_duration().as_secs(), 172_800);
        assert_eq!(Ttl::parse("1h30m").unwrap().as_duration().as_secs(), 5400);
        assert_eq!(Ttl::parse("14d").unwrap().to_string(), "14d");
        for bad in [
            "",
            "0h",
            "h",
            "12",
            "3x",
            "-1h",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(Ttl::parse(bad).is_err(), "{bad}");
        }
    }
}
