//! Python values <-> Rust values: timeouts and commands.

use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// A timeout argument: `None`, seconds (`int`/`float`) or a `datetime.timedelta`.
pub fn timeout(value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Duration>> {
    let Some(v) = value else { return Ok(None) };
    if v.is_none() {
        return Ok(None);
    }
    let secs: f64 = if v.hasattr("total_seconds")? {
        v.call_method0("total_seconds")?.extract()?
    } else if v.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err(
            "timeout must be seconds or a datetime.timedelta, not bool",
        ));
    } else {
        v.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "timeout must be seconds (int or float) or a datetime.timedelta, not {}",
                v.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(PyValueError::new_err(format!(
            "timeout must be a non-negative number of seconds, not {secs}"
        )));
    }
    Ok(Some(Duration::from_secs_f64(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_accept_seconds_and_timedelta() {
        Python::attach(|py| {
            let eval = |s: &std::ffi::CStr| py.eval(s, None, None).unwrap();
            assert_eq!(
                timeout(Some(&eval(c"7"))).unwrap(),
                Some(Duration::from_secs(7))
            );
            assert_eq!(
                timeout(Some(&eval(c"0.5"))).unwrap(),
                Some(Duration::from_millis(500))
            );
            assert_eq!(timeout(Some(&eval(c"None"))).unwrap(), None);
            assert_eq!(timeout(None).unwrap(), None);
            let td = py
                .eval(
                    c"__import__('datetime').timedelta(minutes=1, milliseconds=250)",
                    None,
                    None,
                )
                .unwrap();
            assert_eq!(
                timeout(Some(&td)).unwrap(),
                Some(Duration::from_millis(60_250))
            );
            assert!(timeout(Some(&eval(c"'soon'")))
                .unwrap_err()
                .to_string()
                .contains("timedelta"));
            assert!(timeout(Some(&eval(c"True"))).is_err());
            assert!(timeout(Some(&eval(c"-1"))).is_err());
        });
    }
}
