//! ipxe-ca: a private CA, per-board iPXE images and an mTLS boot server for a farm of boards
//! that boot over the network. The binary `ipxe-ca` is a thin shell over this library.
#![forbid(unsafe_code)]

pub mod board;
pub mod ca;
pub mod codesign;
mod der;
pub mod digest;
pub mod error;
pub mod flash;
pub mod health;
pub mod ipxe_build;
pub mod ipxe_error;
pub mod lab;
pub mod render;
pub mod secure_boot;
pub mod server;
pub mod siglist;
pub mod store;
pub mod types;

pub use error::{Error, Result};

#[cfg(test)]
mod proptests;
pub use lab::Lab;
