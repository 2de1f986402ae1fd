//! This build's identity, embedded by build.rs: for `dropgate --version`, and handed to
//! the gateway for `/api/v1/status` and `dropgate_build_info`.

use gateway::build_info::BuildInfo;

/// The build, as the gateway shows it.
pub const BUILD: BuildInfo = BuildInfo {
    version: env!("CARGO_PKG_VERSION"),
    revision: env!("DROPGATE_BUILD_REVISION"),
    branch: env!("DROPGATE_BUILD_BRANCH"),
    build_user: env!("DROPGATE_BUILD_USER"),
    build_date: env!("DROPGATE_BUILD_DATE"),
    rust_version: env!("DROPGATE_BUILD_RUSTC"),
};

/// `dropgate --version`: laid out like the pushgateway's, so whoever compares the two
/// finds the same lines.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (branch: ",
    env!("DROPGATE_BUILD_BRANCH"),
    ", revision: ",
    env!("DROPGATE_BUILD_REVISION"),
    ")\n  build user:       ",
    env!("DROPGATE_BUILD_USER"),
    "\n  build date:       ",
    env!("DROPGATE_BUILD_DATE"),
    "\n  rust version:     ",
    env!("DROPGATE_BUILD_RUSTC"),
    "\n  platform:         linux/",
    env!("DROPGATE_BUILD_ARCH"),
);
