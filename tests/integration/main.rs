//! One integration-test binary: every test drives the real `ipxe-ca` binary and checks the
//! result with independent tools (openssl, curl, nginx, QEMU).

#[path = "../common/mod.rs"]
mod common;
mod qemu;
mod util;

mod arm64;
mod boot;
mod build;
mod confinement;
mod console;
mod files_root;
mod flash;
mod foundation;
mod hostile;
mod mutations;
mod operator;
mod ops;
mod real_ipxe;
mod secure_boot;
mod server;
mod stalls;
mod trust;
