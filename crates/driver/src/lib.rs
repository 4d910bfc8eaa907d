//! Multi-machine integration tests in real QEMU virtual machines: Test, Machine, VLan, templates and logging.

pub mod log;
pub mod template;
pub mod timeouts;

pub use log::{Logger, Span};
pub use template::{substitute_all, substitute_file, substitute_named, TemplateError, Vars};
pub use timeouts::TimeoutScale;
