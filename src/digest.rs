//! SHA-256, streamed: build manifests record it, `flash` compares a stick against it.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// A running SHA-256.
pub struct Sha256(aws_lc_rs::digest::Context);

impl Default for Sha256 {
    fn default() -> Self {
        Sha256(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }
}

impl Sha256 {
    /// Add bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest in lowercase hex.
    pub fn hex(self) -> String {
        hex::encode(self.0.finish().as_ref())
    }
}

/// SHA-256 of a file in lowercase hex, read 1 MiB at a time.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let mut h = Sha256::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io("cannot read", path, e))?;
        if n == 0 {
            return Ok(h.hex());
        }
        h.update(&buf[..n]);
    }
}
