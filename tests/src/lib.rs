//! The PostgREST tutorial test and other VM tests.
