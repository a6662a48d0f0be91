//! Rendering iPXE script templates (Jinja2 syntax via minijinja): profiles, one-time secrets
//! and the embed script. Undefined names fail loudly, except in `if` tests, so that a typo
//! in a template shows up as an error instead of a silently wrong kernel command line.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior, Value};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::registry::Board;

/// What a template sees of a board.
#[derive(Clone, Debug, Serialize)]
pub struct BoardContext {
    /// Board name.
    pub name: String,
    /// MAC, or empty.
    pub mac: String,
    /// Certificate serial (hex).
    pub serial: String,
    /// SHA-256 fingerprint.
    pub fingerprint: String,
    /// SHA-1 fingerprint.
    pub fingerprint_sha1: String,
    /// Profile name.
    pub profile: String,
}

impl From<&Board> for BoardContext {
    fn from(b: &Board) -> Self {
        BoardContext {
            name: b.name.to_string(),
            mac: b.mac.map(|m| m.to_string()).unwrap_or_default(),
            serial: b.serial.clone(),
            fingerprint: b.fingerprint_sha256.to_string(),
            fingerprint_sha1: b.fingerprint_sha1.to_string(),
            profile: b.profile.to_string(),
        }
    }
}

/// The full template context.
#[derive(Clone, Debug, Serialize)]
pub struct Context {
    /// The board.
    pub board: BoardContext,
    /// Its variables.
    pub vars: BTreeMap<String, String>,
    /// Its secrets.
    pub secrets: BTreeMap<String, String>,
    /// Base URL of the mTLS server.
    pub server_url: String,
    /// The files directory on the plain-HTTP port (`{{ files_url }}/vmlinuz`).
    pub files_url: String,
    /// The files directory over mutual TLS, for enrolled boards only.
    pub secure_files_url: String,
    /// NTP server for boards without a real-time clock (embed script), if any.
    pub ntp_server: Option<String>,
    /// Whether the board's iPXE has `imgverify` (images built from source by ipxe-ca).
    pub imgverify: bool,
}

impl Context {
    /// The context for `board` with no secrets, as the embed script and profiles start.
    pub fn new(board: &Board, config: &crate::config::Config) -> Context {
        Context {
            board: board.into(),
            vars: board.vars.clone(),
            secrets: BTreeMap::new(),
            server_url: config.server_url.clone(),
            files_url: config.files_url.clone(),
            secure_files_url: format!("{}/files", config.server_url),
            ntp_server: None,
            imgverify: false,
        }
    }
}

/// Render `source` (named `name` in errors) with `ctx`; `extra` adds functions such as
/// `one_time_url`.
pub fn render(
    name: &str,
    source: &str,
    ctx: &Context,
    extra: &[(&'static str, Value)],
) -> Result<String> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env.set_keep_trailing_newline(true);
    env.add_template(name, source)
        .map_err(|e| Error::invalid(format!("template {name}: {e}")))?;
    for (fname, f) in extra {
        env.add_global(*fname, f.clone());
    }
    let tmpl = env
        .get_template(name)
        .map_err(|e| Error::invalid(format!("template {name}: {e}")))?;
    tmpl.render(Value::from_serialize(ctx))
        .map_err(|e| Error::invalid(format!("template {name}: {e}")))
}
