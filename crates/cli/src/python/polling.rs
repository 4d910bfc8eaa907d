//! Polling conditions active in Python `with cond:` blocks.
//!
//! The driver checks conditions before each command and on a timer inside its closure-based
//! `with_polling`; Python's `with` is an enter/exit pair, so until the driver offers one
//! (docs/contracts.md, machinist-cli) the binding keeps the active list itself and checks
//! overdue conditions before every machine call, exactly as the NixOS driver does.

use std::sync::Mutex;

use pyo3::prelude::*;

use super::machine::script_error;

static ACTIVE: Mutex<Vec<(u64, machinist::PollingCondition)>> = Mutex::new(Vec::new());

/// Activates `cond` under `token`.
pub fn push(token: u64, cond: machinist::PollingCondition) {
    ACTIVE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((token, cond));
}

/// Deactivates `token`.
pub fn pop(token: u64) {
    ACTIVE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|(t, _)| *t != token);
}

/// Deactivates everything (the run ended).
pub fn clear() {
    ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// Checks every active condition that is overdue; a failure becomes PollingConditionError.
pub fn check_active(py: Python<'_>) -> PyResult<()> {
    let conds: Vec<machinist::PollingCondition> = ACTIVE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(_, c)| c.clone())
        .collect();
    for c in conds {
        // The check calls back into Python; it takes the GIL itself.
        py.detach(|| c.check(false))
            .map_err(|e| script_error(e).to_py(py))?;
    }
    Ok(())
}
