//! What build this is: the version and the facts `build.rs` recorded (git
//! revision and branch, build date, rustc version, platform), for
//! `--version` and `whatsapp_flows_exporter_build_info`.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("FLOWS_EXPORTER_REVISION");
pub const BRANCH: &str = env!("FLOWS_EXPORTER_BRANCH");
pub const BUILD_DATE: &str = env!("FLOWS_EXPORTER_BUILD_DATE");
pub const RUSTC_VERSION: &str = env!("FLOWS_EXPORTER_RUSTC_VERSION");
/// `os/arch` of the target, e.g. `linux/x86_64`.
pub const PLATFORM: &str = env!("FLOWS_EXPORTER_PLATFORM");

/// The label names and values of `build_info`, in order.
pub fn labels() -> [(&'static str, &'static str); 6] {
    [
        ("version", VERSION),
        ("revision", REVISION),
        ("branch", BRANCH),
        ("build_date", BUILD_DATE),
        ("rustc_version", RUSTC_VERSION),
        ("platform", PLATFORM),
    ]
}

/// `--version`, in the shape of Prometheus' own.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (branch: ",
    env!("FLOWS_EXPORTER_BRANCH"),
    ", revision: ",
    env!("FLOWS_EXPORTER_REVISION"),
    ")\n  build date:       ",
    env!("FLOWS_EXPORTER_BUILD_DATE"),
    "\n  rustc version:    ",
    env!("FLOWS_EXPORTER_RUSTC_VERSION"),
    "\n  platform:         ",
    env!("FLOWS_EXPORTER_PLATFORM"),
);
