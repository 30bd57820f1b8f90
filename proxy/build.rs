//! Rebuilds the crate when the dashboard build (`dashboard-app/dist`, embedded by
//! `admin::dashboard`) appears or changes. Watching `dashboard-app/`, which always
//! exists, also catches a `dist/` created after the last build (a missing path
//! would make cargo run this script on every build).

fn main() {
    println!("cargo:rerun-if-changed=../dashboard-app");
    println!("cargo:rerun-if-changed=build.rs");
}
