//! Default timeouts and `MACHINIST_TIMEOUT_SCALE`.
//!
//! Every timeout the driver applies (command timeouts, the boot deadline, the global timeout,
//! polling intervals are *not* scaled) is multiplied by the scale read from the environment
//! variable `MACHINIST_TIMEOUT_SCALE` (a positive decimal number, default 1), like openQA's
//! `TIMEOUT_SCALE`. The test logs the scale when it is not 1.

use std::time::Duration;

/// Default timeout of commands and waits (`wait_until_succeeds`, `wait_for_unit`, ...): 900 s, as in NixOS.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);
/// Default deadline for a machine to boot (its backdoor shell to greet us) after `start`: 300 s.
pub const DEFAULT_BOOT_DEADLINE: Duration = Duration::from_secs(300);
/// Default global timeout of a test run: 1 h (the NixOS `globalTimeout` default).
pub const DEFAULT_GLOBAL_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default `wait_for_qmp_event` timeout: 600 s, as in NixOS.
pub const DEFAULT_QMP_EVENT_TIMEOUT: Duration = Duration::from_secs(600);
/// Name of the environment variable that scales every timeout.
pub const TIMEOUT_SCALE_ENV: &str = "MACHINIST_TIMEOUT_SCALE";

/// `MACHINIST_TIMEOUT_SCALE` is set to something that is not a positive number.
#[derive(Debug, thiserror::Error)]
#[error(
    "{TIMEOUT_SCALE_ENV}={value:?} is not a positive number; set it to e.g. 2 or 0.5, or unset it"
)]
pub struct TimeoutScaleError {
    /// The offending value.
    pub value: String,
}

/// A multiplier applied to every timeout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeoutScale(f64);

impl Default for TimeoutScale {
    fn default() -> Self {
        TimeoutScale(1.0)
    }
}

impl TimeoutScale {
    /// A fixed scale (must be positive and finite).
    pub fn new(factor: f64) -> Result<Self, TimeoutScaleError> {
        if factor.is_finite() && factor > 0.0 {
            Ok(TimeoutScale(factor))
        } else {
            Err(TimeoutScaleError {
                value: factor.to_string(),
            })
        }
    }

    /// Reads `MACHINIST_TIMEOUT_SCALE` (unset or empty = 1).
    pub fn from_env() -> Result<Self, TimeoutScaleError> {
        match std::env::var(TIMEOUT_SCALE_ENV) {
            Ok(v) if !v.trim().is_empty() => Self::parse(&v),
            _ => Ok(Self::default()),
        }
    }

    /// Parses a scale such as `"2"` or `"0.5"`.
    pub fn parse(value: &str) -> Result<Self, TimeoutScaleError> {
        value
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(|f| Self::new(f).ok())
            .ok_or_else(|| TimeoutScaleError {
                value: value.to_string(),
            })
    }

    /// The factor.
    pub fn factor(self) -> f64 {
        self.0
    }

    /// True when the factor is 1 (nothing to log).
    pub fn is_identity(self) -> bool {
        self.0 == 1.0
    }

    /// `d` multiplied by the factor (saturating at about 100 years).
    pub fn apply(self, d: Duration) -> Duration {
        if self.is_identity() {
            return d.min(MAX_TIMEOUT);
        }
        let secs = (d.as_secs_f64() * self.0).min(MAX_TIMEOUT.as_secs_f64());
        Duration::from_secs_f64(secs)
    }
}

/// The longest timeout: one year. Longer ones (`1e20` seconds, `u64::MAX`) mean "practically
/// never" and are capped, so that no deadline arithmetic can overflow.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_timeouts_are_capped_not_overflowing() {
        for scale in [TimeoutScale(1.0), TimeoutScale(2.5)] {
            assert_eq!(scale.apply(Duration::MAX), MAX_TIMEOUT);
            assert_eq!(scale.apply(Duration::from_secs(u64::MAX)), MAX_TIMEOUT);
        }
        let _ = std::time::Instant::now() + TimeoutScale(1.0).apply(Duration::MAX);
    }

    #[test]
    fn parse_and_apply() {
        assert_eq!(
            TimeoutScale::parse("2")
                .unwrap()
                .apply(Duration::from_secs(7)),
            Duration::from_secs(14)
        );
        assert_eq!(
            TimeoutScale::parse(" 0.5 ")
                .unwrap()
                .apply(Duration::from_secs(900)),
            Duration::from_secs(450)
        );
        assert!(TimeoutScale::parse("0").is_err());
        assert!(TimeoutScale::parse("-1").is_err());
        assert!(TimeoutScale::parse("fast").is_err());
        assert!(TimeoutScale::parse("inf").is_err());
        let err = TimeoutScale::parse("x").unwrap_err().to_string();
        assert_eq!(
            err,
            "MACHINIST_TIMEOUT_SCALE=\"x\" is not a positive number; set it to e.g. 2 or 0.5, or unset it"
        );
        assert!(TimeoutScale::default().is_identity());
    }
}
