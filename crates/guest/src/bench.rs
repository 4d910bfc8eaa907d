//! Boot benchmark (placeholder).
