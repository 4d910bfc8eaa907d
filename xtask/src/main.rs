//! Project automation: deps, test, test-postgrest, build-images, interactive, bench, ci.

fn main() {}
