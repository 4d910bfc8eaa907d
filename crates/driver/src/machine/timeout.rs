//! `IntoTimeout`: timeouts as `Duration`, whole seconds or `None` (= the NixOS default).

use std::time::Duration;

/// Anything usable as a timeout argument: a `Duration`, a number of seconds (`7`, `0.5`) like the
/// NixOS driver accepts, or `None` for the method's default (900 s for commands and waits).
/// Every timeout is multiplied by `MACHINIST_TIMEOUT_SCALE`.
pub trait IntoTimeout {
    /// The timeout, or `None` for the default.
    fn into_timeout(self) -> Option<Duration>;
}

impl IntoTimeout for Duration {
    fn into_timeout(self) -> Option<Duration> {
        Some(self)
    }
}

impl IntoTimeout for Option<Duration> {
    fn into_timeout(self) -> Option<Duration> {
        self
    }
}

macro_rules! int_secs {
    ($($t:ty),*) => {$(
        impl IntoTimeout for $t {
            fn into_timeout(self) -> Option<Duration> {
                Some(Duration::from_secs(u64::try_from(self).unwrap_or(0)))
            }
        }
    )*};
}
int_secs!(u8, u16, u32, u64, usize, i32, i64);

impl IntoTimeout for f64 {
    /// Negative and NaN mean 0; more than [`crate::timeouts::MAX_TIMEOUT`] (even `1e20` or
    /// infinity) means that cap: never a panic.
    fn into_timeout(self) -> Option<Duration> {
        let cap = crate::timeouts::MAX_TIMEOUT;
        Some(
            Duration::try_from_secs_f64(self.max(0.0))
                .unwrap_or(cap)
                .min(cap),
        )
    }
}

/// One or several shell commands (`succeed("a")`, `succeed(["a", "b"])`, `succeed(&vec)`).
pub trait Commands {
    /// The commands, in order.
    fn commands(&self) -> Vec<String>;
}

impl Commands for &str {
    fn commands(&self) -> Vec<String> {
        vec![self.to_string()]
    }
}

impl Commands for String {
    fn commands(&self) -> Vec<String> {
        vec![self.clone()]
    }
}

impl Commands for &String {
    fn commands(&self) -> Vec<String> {
        vec![(*self).clone()]
    }
}

impl<const N: usize> Commands for [&str; N] {
    fn commands(&self) -> Vec<String> {
        self.iter().map(|s| s.to_string()).collect()
    }
}

impl Commands for &[&str] {
    fn commands(&self) -> Vec<String> {
        self.iter().map(|s| s.to_string()).collect()
    }
}

impl Commands for Vec<String> {
    fn commands(&self) -> Vec<String> {
        self.clone()
    }
}

impl Commands for &[String] {
    fn commands(&self) -> Vec<String> {
        self.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeouts::MAX_TIMEOUT;

    #[test]
    fn any_float_is_a_timeout_without_panicking() {
        assert_eq!(1e20_f64.into_timeout(), Some(MAX_TIMEOUT));
        assert_eq!(f64::INFINITY.into_timeout(), Some(MAX_TIMEOUT));
        assert_eq!(f64::NAN.into_timeout(), Some(Duration::ZERO));
        assert_eq!((-3.0_f64).into_timeout(), Some(Duration::ZERO));
        assert_eq!(0.5_f64.into_timeout(), Some(Duration::from_millis(500)));
    }
}
