//! Python values -> Rust values for the binding's arguments, accepting what the NixOS driver
//! accepts (it is plain Python: a tty is formatted into a path, so `"1"` and `1` both work; a flag
//! is tested for truth) and rejecting what would misbehave with a clear `TypeError` or
//! `ValueError` instead of a panic (`timeout=1e20`, `nan`, `inf`, negative).

use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyString};

/// The longest timeout or delay accepted (a year): longer ones are almost certainly a mistake
/// (`1e20`), and "no timeout" is spelt `None` where the NixOS driver allows it.
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A number of seconds (`int`, `float` or `datetime.timedelta`), finite, between 0 and
/// [`MAX_SECONDS`]. `Option<Seconds>` arguments take `None` as "the method's default".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

/// Checks a number of seconds given as `what` (the argument's name).
pub fn checked_seconds(secs: f64, what: &str) -> PyResult<Duration> {
    if !secs.is_finite() || !(0.0..=MAX_SECONDS).contains(&secs) {
        return Err(PyValueError::new_err(format!(
            "{what} must be a finite number of seconds between 0 and {MAX_SECONDS:.0} (a year), \
             not {secs}; give None for the method's default"
        )));
    }
    Ok(machinist::timeouts::from_secs_f64(secs))
}

fn seconds_of(v: &Bound<'_, PyAny>, what: &str) -> PyResult<Duration> {
    let secs: f64 = if v.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be seconds (int or float) or a datetime.timedelta, not bool"
        )));
    } else if v.is_instance_of::<PyInt>() || v.is_instance_of::<PyFloat>() {
        // A huge int converts to inf, which the range check rejects.
        v.extract()?
    } else if v.hasattr("total_seconds")? {
        v.call_method0("total_seconds")?.extract()?
    } else {
        return Err(PyTypeError::new_err(format!(
            "{what} must be seconds (int or float) or a datetime.timedelta, not {}",
            type_name(v)
        )));
    };
    checked_seconds(secs, what)
}

impl<'a, 'py> FromPyObject<'a, 'py> for Seconds {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        seconds_of(&obj, "a timeout or delay").map(Seconds)
    }
}

/// Seconds from an optional Python value (`None` -> `None`), for the test-level functions.
pub fn timeout(value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Duration>> {
    match value {
        Some(v) if !v.is_none() => seconds_of(v, "timeout").map(Some),
        _ => Ok(None),
    }
}

/// A whole number given as `int` or as a string of digits (`"1"`), as a NixOS script may pass
/// it (the NixOS driver formats it into a command or a path).
fn whole_number(v: &Bound<'_, PyAny>, what: &str, max: u64) -> PyResult<u64> {
    let n: u64 = if v.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be an int or a string of digits, not bool"
        )));
    } else if v.is_instance_of::<PyInt>() {
        v.extract().map_err(|_| {
            PyValueError::new_err(format!("{what} must be between 0 and {max}, not {v}"))
        })?
    } else if v.is_instance_of::<PyString>() {
        let s: String = v.extract()?;
        s.trim().parse().map_err(|_| {
            PyValueError::new_err(format!("{what} must be a whole number, not {s:?}"))
        })?
    } else {
        return Err(PyTypeError::new_err(format!(
            "{what} must be an int or a string of digits, not {}",
            type_name(v)
        )));
    };
    if n > max {
        return Err(PyValueError::new_err(format!(
            "{what} must be between 0 and {max}, not {n}"
        )));
    }
    Ok(n)
}

/// A virtual terminal number: `1` or `"1"` (NixOS `get_tty_text("1")`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tty(pub u32);

impl<'a, 'py> FromPyObject<'a, 'py> for Tty {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        // Linux has at most 63 virtual terminals.
        whole_number(&obj, "tty", 63).map(|n| Tty(n as u32))
    }
}

/// A TCP port: `80` or `"80"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port(pub u16);

impl<'a, 'py> FromPyObject<'a, 'py> for Port {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        whole_number(&obj, "port", u16::MAX as u64).map(|n| Port(n as u16))
    }
}

/// A flag tested for truth, as Python's `if check_return:` does (`1`, `0`, `None` work).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag(pub bool);

impl<'a, 'py> FromPyObject<'a, 'py> for Flag {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        obj.is_truthy().map(Flag)
    }
}

/// A path given as `str` or any `os.PathLike` (`pathlib.Path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathArg(pub String);

impl<'a, 'py> FromPyObject<'a, 'py> for PathArg {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if let Ok(s) = obj.extract::<String>() {
            return Ok(PathArg(s));
        }
        let fspath = obj.py().import("os")?.call_method1("fspath", (obj,));
        match fspath.and_then(|p| p.extract::<String>()) {
            Ok(s) => Ok(PathArg(s)),
            Err(_) => Err(PyTypeError::new_err(format!(
                "a path must be a str or an os.PathLike, not {}",
                type_name(&obj)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval<'py>(py: Python<'py>, s: &str) -> Bound<'py, PyAny> {
        let code = std::ffi::CString::new(s).unwrap();
        py.eval(&code, None, None).unwrap()
    }

    #[test]
    fn timeouts_accept_seconds_and_timedelta() {
        Python::attach(|py| {
            let secs = |s: &str| timeout(Some(&eval(py, s)));
            assert_eq!(secs("7").unwrap(), Some(Duration::new(7, 0)));
            assert_eq!(secs("0.5").unwrap(), Some(Duration::new(0, 500_000_000)));
            assert_eq!(secs("0").unwrap(), Some(Duration::ZERO));
            assert_eq!(secs("None").unwrap(), None);
            assert_eq!(timeout(None).unwrap(), None);
            assert_eq!(
                secs("__import__('datetime').timedelta(minutes=1, milliseconds=250)").unwrap(),
                Some(Duration::new(60, 250_000_000))
            );
            assert!(secs("'soon'")
                .unwrap_err()
                .to_string()
                .contains("timedelta"));
            assert!(secs("True").unwrap_err().is_instance_of::<PyTypeError>(py));
        });
    }

    /// Each of these used to panic when converted to a `Duration` (or overflow a deadline).
    #[test]
    fn bad_timeouts_are_value_errors_not_panics() {
        Python::attach(|py| {
            for bad in [
                "1e20",
                "float('nan')",
                "float('inf')",
                "-float('inf')",
                "-1",
                "-0.5",
                "10**30",
                "__import__('datetime').timedelta(days=-1)",
                "__import__('datetime').timedelta(days=400)",
            ] {
                let e = timeout(Some(&eval(py, bad))).unwrap_err();
                assert!(e.is_instance_of::<PyValueError>(py), "{bad}: {e}");
                let msg = e.to_string();
                assert!(
                    msg.contains("between 0 and 31536000") && msg.contains("None"),
                    "{bad}: {msg}"
                );
                let e = eval(py, bad).extract::<Seconds>().unwrap_err();
                assert!(e.is_instance_of::<PyValueError>(py), "{bad}: {e}");
            }
            assert_eq!(
                eval(py, "31536000").extract::<Seconds>().unwrap(),
                Seconds(Duration::new(31_536_000, 0))
            );
        });
    }

    #[test]
    fn ttys_and_ports_as_int_or_str() {
        Python::attach(|py| {
            assert_eq!(eval(py, "1").extract::<Tty>().unwrap(), Tty(1));
            assert_eq!(eval(py, "'1'").extract::<Tty>().unwrap(), Tty(1));
            assert_eq!(eval(py, "' 2 '").extract::<Tty>().unwrap(), Tty(2));
            for bad in ["'one'", "-1", "64", "'99999999999999999999'"] {
                let e = eval(py, bad).extract::<Tty>().unwrap_err();
                assert!(e.is_instance_of::<PyValueError>(py), "{bad}: {e}");
                assert!(e.to_string().contains("tty"), "{bad}: {e}");
            }
            for bad in ["1.0", "True", "None"] {
                let e = eval(py, bad).extract::<Tty>().unwrap_err();
                assert!(e.is_instance_of::<PyTypeError>(py), "{bad}: {e}");
            }
            assert_eq!(eval(py, "8080").extract::<Port>().unwrap(), Port(8080));
            assert_eq!(eval(py, "'443'").extract::<Port>().unwrap(), Port(443));
            assert!(eval(py, "65536").extract::<Port>().is_err());
        });
    }

    #[test]
    fn flags_are_truthiness_and_paths_take_pathlike() {
        Python::attach(|py| {
            assert_eq!(eval(py, "0").extract::<Flag>().unwrap(), Flag(false));
            assert_eq!(eval(py, "1").extract::<Flag>().unwrap(), Flag(true));
            assert_eq!(eval(py, "None").extract::<Flag>().unwrap(), Flag(false));
            assert_eq!(
                eval(py, "__import__('pathlib').Path('/tmp/x')")
                    .extract::<PathArg>()
                    .unwrap(),
                PathArg("/tmp/x".into())
            );
            assert!(eval(py, "3").extract::<PathArg>().is_err());
        });
    }
}
