//! The run's timeout policy: every duration the driver waits for, named in one place.
//!
//! * Defaults of the methods' timeout arguments ([`DEFAULT_TIMEOUT`], ...) and of a test's
//!   deadlines ([`DEFAULT_BOOT_DEADLINE`], [`DEFAULT_GLOBAL_TIMEOUT`]).
//! * [`Wait`]: every fixed timeout the driver applies on its own (QEMU connecting, a QMP command,
//!   the boot settle, snapshot building, ...), each with its base value.
//! * [`Pace`]: polling intervals and key delays. They pace loops and bound nothing, so they are
//!   not scaled.
//!
//! A [`Timeouts`] value, owned by the run, multiplies every timeout (the script's arguments,
//! the defaults and every [`Wait`]) by the scale read from `MACHINIST_TIMEOUT_SCALE` (a
//! positive decimal number, default 1), like openQA's `TIMEOUT_SCALE`. The test logs the scale
//! when it is not 1.
//!
//! A timeout argument ([`IntoTimeout`]) of `None` means the method's default, in every method;
//! [`NEVER`] means no limit (the global timeout still applies).

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

/// No limit: the longest timeout ([`MAX_TIMEOUT`], one year). Pass it where NixOS passes
/// `timeout=None`; the global timeout still ends the run.
pub const NEVER: Duration = MAX_TIMEOUT;
/// Default interval of a polling condition: 2 s, as in NixOS.
pub const DEFAULT_POLLING_INTERVAL: Duration = Duration::from_secs(2);
/// How long `machinist doctor` waits for the host-wide VM lock before it reports it as held.
pub const VM_LOCK_WAIT: Duration = Duration::from_secs(300);

/// A fixed timeout the driver applies on its own; [`Timeouts::of`] gives its scaled value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wait {
    /// QEMU connecting its QMP socket and both backdoor consoles after it starts.
    QemuConnect,
    /// One QMP command ([`crate::Machine::qmp_command`], status polls of a restore).
    QmpCommand,
    /// systemd finishing its start-up (`systemctl is-system-running --wait`) before a timed
    /// wait starts its clock (the boot settle).
    BootSettle,
    /// Taking over a guest shell that was re-spawned (its greeting is already read).
    RespawnReconnect,
    /// A cancelled guest command reporting its end, so that the shell stays in step.
    CancelDrain,
    /// QEMU exiting after it was killed.
    KillGrace,
    /// QEMU exiting after the backdoor shell disconnected (tells a crash from a glitch).
    ExitAfterDisconnect,
    /// The `systemctl poweroff` request of [`crate::Machine::shutdown`].
    PoweroffRequest,
    /// Reading a machine's journal after a failure.
    FailureJournal,
    /// `systemctl status` and the journal of a unit that failed a wait.
    UnitDiagnostics,
    /// Host-side slack over a guest-side wait loop's deadline before the loop is killed.
    GuestLoopSlack,
    /// How long the last attempt of a guest-side wait loop may run past the deadline (NixOS
    /// lets it finish): an attempt started just before the deadline may still succeed.
    AttemptGrace,
    /// A polling condition's command on the control channel, when it gives no timeout.
    ControlCommand,
    /// Probing the guest for an X server (`wait_for_x`, window functions).
    XProbe,
    /// Loading a warm-start snapshot's state until the restored VM runs.
    RestoreLoad,
    /// Reading the result of a restored machine's identity step.
    IdentityCheck,
    /// Waiting for another process that builds the same snapshot.
    SnapshotLock,
    /// The snapshot builder's boot (backdoor greeting).
    SnapshotBoot,
    /// Each step of the snapshot builder (settle, arm the shells, migrate).
    SnapshotStep,
    /// The snapshot builder's QEMU quitting after the state was saved.
    SnapshotQuit,
    /// The script returning after the global timeout, before the process exits.
    GlobalTimeoutGrace,
    /// Stopping the run's async runtime at the end.
    RuntimeShutdown,
}

impl Wait {
    /// The base value (before scaling).
    pub const fn base(self) -> Duration {
        match self {
            Wait::QemuConnect
            | Wait::QmpCommand
            | Wait::BootSettle
            | Wait::FailureJournal
            | Wait::ControlCommand
            | Wait::XProbe
            | Wait::RestoreLoad
            | Wait::IdentityCheck
            | Wait::GlobalTimeoutGrace => Duration::from_secs(60),
            Wait::RespawnReconnect | Wait::PoweroffRequest | Wait::UnitDiagnostics => {
                Duration::from_secs(30)
            }
            Wait::CancelDrain => Duration::from_secs(15),
            Wait::KillGrace => Duration::from_secs(5),
            Wait::ExitAfterDisconnect | Wait::RuntimeShutdown => Duration::from_secs(2),
            Wait::GuestLoopSlack => Duration::from_secs(8),
            Wait::AttemptGrace => Duration::from_secs(3),
            Wait::SnapshotLock => Duration::from_secs(900),
            Wait::SnapshotBoot => Duration::from_secs(300),
            Wait::SnapshotStep => Duration::from_secs(120),
            Wait::SnapshotQuit => Duration::from_secs(10),
        }
    }
}

/// A pacing interval: how often a loop looks again, or the pause between keys. Not a timeout,
/// so not scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pace {
    /// Between looks at the serial console for new text.
    ConsolePoll,
    /// Between OCR looks at a tty or the screen.
    ScreenPoll,
    /// Between looks for an X window, and between attempts of `retry`.
    RetryPause,
    /// Between keys sent to the guest (NixOS: 0.01 s).
    KeyDelay,
    /// Between status queries while a snapshot's state loads.
    RestorePoll,
    /// Between attempts to take a busy cache lock.
    LockPoll,
    /// How long the polling-condition thread lingers for a nested block before it ends.
    PollerLinger,
    /// The shortest pause of the polling-condition thread.
    PollerMin,
    /// The longest pause of the polling-condition thread (and its pause with nothing due).
    PollerMax,
    /// The polling-condition thread's pause when no condition is registered.
    PollerIdle,
}

impl Pace {
    /// The interval.
    pub const fn get(self) -> Duration {
        match self {
            Pace::ConsolePoll | Pace::ScreenPoll | Pace::PollerMax => Duration::from_millis(500),
            Pace::RetryPause => Duration::from_secs(1),
            Pace::KeyDelay => Duration::from_millis(10),
            Pace::RestorePoll | Pace::PollerMin => Duration::from_millis(20),
            Pace::LockPoll | Pace::PollerIdle => Duration::from_millis(200),
            Pace::PollerLinger => Duration::from_millis(50),
        }
    }
}

/// The timeout policy of one run: the scale, and the run's boot deadline and global timeout
/// (both already scaled). Every timeout the driver applies comes from here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    scale: TimeoutScale,
    boot_deadline: Duration,
    global: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts::new(
            TimeoutScale::default(),
            DEFAULT_BOOT_DEADLINE,
            DEFAULT_GLOBAL_TIMEOUT,
        )
    }
}

impl Timeouts {
    /// The policy for `scale`, with a boot deadline and a global timeout before scaling.
    pub fn new(scale: TimeoutScale, boot_deadline: Duration, global: Duration) -> Self {
        Timeouts {
            scale,
            boot_deadline: scale.apply(boot_deadline),
            global: scale.apply(global),
        }
    }

    /// The scale.
    pub fn scale(&self) -> TimeoutScale {
        self.scale
    }

    /// A timeout given by the script (or a default), scaled.
    pub fn scaled(&self, d: Duration) -> Duration {
        self.scale.apply(d)
    }

    /// A method's timeout argument, scaled: `None` is the method's `default`.
    pub fn arg(&self, t: impl IntoTimeout, default: Duration) -> Duration {
        self.scaled(t.into_timeout().unwrap_or(default))
    }

    /// A fixed timeout of the driver, scaled.
    pub fn of(&self, w: Wait) -> Duration {
        self.scaled(w.base())
    }

    /// How long a machine may take to boot (its backdoor to greet), scaled.
    pub fn boot_deadline(&self) -> Duration {
        self.boot_deadline
    }

    /// The run's global timeout, scaled.
    pub fn global(&self) -> Duration {
        self.global
    }
}

/// Anything usable as a timeout argument: a `Duration`, a number of seconds (`7`, `0.5`) like the
/// NixOS driver accepts, or `None` for the method's default. Every timeout is multiplied by
/// `MACHINIST_TIMEOUT_SCALE`; pass [`NEVER`] for no limit.
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
    /// Negative and NaN mean 0; more than [`MAX_TIMEOUT`] (even `1e20` or infinity) means that
    /// cap: never a panic.
    fn into_timeout(self) -> Option<Duration> {
        Some(
            Duration::try_from_secs_f64(self.max(0.0))
                .unwrap_or(MAX_TIMEOUT)
                .min(MAX_TIMEOUT),
        )
    }
}

/// `secs` seconds as a timeout (negative and NaN are 0, huge values are [`MAX_TIMEOUT`]).
pub fn from_secs_f64(secs: f64) -> Duration {
    secs.into_timeout().unwrap_or(Duration::ZERO)
}

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

    #[test]
    fn any_float_is_a_timeout_without_panicking() {
        assert_eq!(1e20_f64.into_timeout(), Some(MAX_TIMEOUT));
        assert_eq!(f64::INFINITY.into_timeout(), Some(MAX_TIMEOUT));
        assert_eq!(f64::NAN.into_timeout(), Some(Duration::ZERO));
        assert_eq!((-3.0_f64).into_timeout(), Some(Duration::ZERO));
        assert_eq!(0.5_f64.into_timeout(), Some(Duration::from_millis(500)));
    }

    #[test]
    fn every_timeout_of_the_policy_is_scaled() {
        let t = Timeouts::new(
            TimeoutScale::parse("2").unwrap(),
            DEFAULT_BOOT_DEADLINE,
            DEFAULT_GLOBAL_TIMEOUT,
        );
        assert_eq!(t.of(Wait::QmpCommand), Duration::from_secs(120));
        assert_eq!(t.boot_deadline(), Duration::from_secs(600));
        assert_eq!(t.global(), Duration::from_secs(7200));
        assert_eq!(t.arg(None, DEFAULT_TIMEOUT), Duration::from_secs(1800));
        assert_eq!(t.arg(7, DEFAULT_TIMEOUT), Duration::from_secs(14));
        assert_eq!(t.arg(NEVER, DEFAULT_TIMEOUT), MAX_TIMEOUT);
    }
}
