//! A small PostgREST-compatible server for the PostgREST tutorial subset.

fn main() {}
