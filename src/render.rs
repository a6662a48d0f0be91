//! Rendering iPXE script templates (Jinja2 syntax via minijinja): profiles, one-time secrets
//! and the embed script. Undefined names fail loudly, except in `if` tests, so that a typo
//! in a template shows up as an error instead of a silently wrong kernel command line.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use minijinja::{Environment, UndefinedBehavior, Value};
use serde::Serialize;

use crate::board::Board;
use crate::error::{Error, Result};
use crate::store::cached::PerFile;
use crate::types::BoardName;

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
    /// CPU architecture, by iPXE's names (`x86_64`, `arm64`).
    pub arch: String,
}

impl From<&Board> for BoardContext {
    fn from(b: &Board) -> Self {
        BoardContext {
            name: b.name.to_string(),
            mac: b.mac.map(|m| m.to_string()).unwrap_or_default(),
            serial: b.serial.to_string(),
            fingerprint: b.fingerprint_sha256.to_string(),
            fingerprint_sha1: b.fingerprint_sha1.to_string(),
            profile: b.profile.to_string(),
            arch: b.arch.name().to_string(),
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
    /// Where the board sends its console over TLS (`HOST:PORT`), unless that is off.
    pub console: Option<String>,
    /// NTP server for boards without a real-time clock (embed script), if any.
    pub ntp_server: Option<String>,
    /// Whether the board's iPXE has `imgverify` (images built from source by ipxe-ca).
    pub imgverify: bool,
}

impl Context {
    /// What `board`'s templates see: its variables, `secrets` (empty for the embed script,
    /// which goes on a medium), the URLs, and whether its iPXE has `imgverify`.
    pub fn for_board(
        board: &Board,
        config: &crate::store::config::Config,
        secrets: BTreeMap<String, String>,
        imgverify: bool,
    ) -> Context {
        Context {
            board: board.into(),
            vars: board.vars.clone(),
            secrets,
            server_url: config.server_url.clone(),
            files_url: config.files_url.clone(),
            secure_files_url: format!("{}/files", config.server_url),
            console: config.console_target(),
            ntp_server: None,
            imgverify,
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
    let env = environment(name.to_string(), source.to_string())?;
    render_with(&env, name, ctx, extra)
}

fn environment(name: String, source: String) -> Result<Environment<'static>> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env.set_keep_trailing_newline(true);
    env.add_template_owned(name.clone(), source)
        .map_err(|e| Error::invalid(format!("template {name}: {e}")))?;
    Ok(env)
}

fn render_with(
    env: &Environment<'static>,
    name: &str,
    ctx: &Context,
    extra: &[(&'static str, Value)],
) -> Result<String> {
    let tmpl = env
        .get_template(name)
        .map_err(|e| Error::invalid(format!("template {name}: {e}")))?;
    // Functions travel in the context, so one compiled template serves every request.
    let extras: BTreeMap<&str, Value> = extra.iter().map(|(k, v)| (*k, v.clone())).collect();
    let value = minijinja::value::merge_maps([Value::from(extras), Value::from_serialize(ctx)]);
    tmpl.render(value)
        .map_err(|e| Error::invalid(format!("template {name}: {e}")))
}

/// Compiled templates, reused until their file changes: a profile is compiled once per edit,
/// not once per boot, and an edit still takes effect on the next request.
pub struct Templates {
    cache: PerFile<PathBuf, Arc<Environment<'static>>>,
}

/// Templates kept at most; past that the cache starts again (a farm has far fewer).
const TEMPLATES_MAX: usize = 10_000;

impl Default for Templates {
    fn default() -> Self {
        Templates {
            cache: PerFile::new(TEMPLATES_MAX),
        }
    }
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Templates")
    }
}

impl Templates {
    /// Render the template file at `path` with `ctx` (and `extra` functions), as its file
    /// reads at `now`.
    pub fn render_file(
        &self,
        path: &Path,
        ctx: &Context,
        extra: &[(&'static str, Value)],
        now: &crate::store::watch::Snapshot,
    ) -> Result<String> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let env = self.cache.get(&path.to_path_buf(), path, now, |exists| {
            if !exists {
                return Err(Error::io(
                    "cannot read",
                    path,
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            }
            let source = std::fs::read_to_string(path).map_err(|e| {
                let what = match e.kind() {
                    // The kernel's refusal in a confined `serve`.
                    std::io::ErrorKind::PermissionDenied => {
                        "cannot read (a template must lie in the state's profiles/ \
                         or secrets/, not link out of them)"
                    }
                    _ => "cannot read",
                };
                Error::io(what, path, e)
            })?;
            Ok(Arc::new(environment(name.clone(), source)?))
        })?;
        render_with(&env, &name, ctx, extra)
    }
}

/// Rendered scripts, reused while nothing they were rendered from has changed (the board, its
/// secrets, its profile, `config.toml`: the state's watched folders say so). A farm booting at
/// once renders each board's script once per edit, not once per boot. A script that calls
/// `one_time_url` is never kept: each boot gets its own URL.
#[derive(Default)]
pub struct Rendered {
    cache: Mutex<HashMap<(BoardName, bool), (crate::store::watch::Token, bytes::Bytes)>>,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rendered")
    }
}

/// Scripts kept at most (more boards than that: the cache starts over).
const RENDERED_MAX: usize = 65_536;

impl Rendered {
    /// The script of `board` (`imgverify` as asked) as kept, if it is still current at `now`.
    pub fn get(
        &self,
        board: &BoardName,
        imgverify: bool,
        now: &crate::store::watch::Snapshot,
    ) -> Option<bytes::Bytes> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(&(board.clone(), imgverify)) {
            Some((token, script)) if now.current(*token) => Some(script.clone()),
            _ => None,
        }
    }

    /// Keep a script rendered from what `token` (taken before anything was read) vouches for.
    pub fn keep(
        &self,
        board: &BoardName,
        imgverify: bool,
        token: crate::store::watch::Token,
        script: bytes::Bytes,
    ) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= RENDERED_MAX {
            cache.clear();
        }
        cache.insert((board.clone(), imgverify), (token, script));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{BoardOptions, InitOptions, Lab};
    use crate::store::watch::Changes;

    /// The compiled template for `path` in the cache.
    fn compiled(t: &Templates, path: &Path) -> Arc<Environment<'static>> {
        t.cache.peek(&path.to_path_buf()).unwrap()
    }

    #[test]
    fn a_profile_is_compiled_again_only_when_its_file_changes() {
        let t = tempfile::tempdir().unwrap();
        let lab = Lab::open(t.path().join("s"));
        lab.init(&InitOptions::default()).unwrap();
        let name: crate::types::BoardName = "b1".parse().unwrap();
        let board = lab
            .enroll_many(std::slice::from_ref(&name), &BoardOptions::default())
            .unwrap()
            .remove(0);
        let config = crate::store::config::Config::load(lab.state()).unwrap();
        let ctx = Context::for_board(&board, &config, BTreeMap::new(), false);
        let path = lab.state().profiles_dir().join("p.ipxe");
        std::fs::write(&path, "#!ipxe\necho one {{ board.name }}\n").unwrap();
        for changes in [Changes::new(lab.state().root()), Changes::off()] {
            let templates = Templates::default();
            let render = || templates.render_file(&path, &ctx, &[], &changes.snapshot());
            assert_eq!(render().unwrap(), "#!ipxe\necho one b1\n");
            let first = compiled(&templates, &path);
            render().unwrap();
            assert!(Arc::ptr_eq(&first, &compiled(&templates, &path)));
            // Another file in the folder changes: this one is looked at, not compiled again.
            std::fs::write(lab.state().profiles_dir().join("other.ipxe"), "#!ipxe\n").unwrap();
            render().unwrap();
            assert!(Arc::ptr_eq(&first, &compiled(&templates, &path)));
            // An edit of this one is in the next render.
            std::fs::write(&path, "#!ipxe\necho two {{ board.name }}\n").unwrap();
            assert_eq!(render().unwrap(), "#!ipxe\necho two b1\n");
            std::fs::write(&path, "#!ipxe\necho one {{ board.name }}\n").unwrap();
        }
    }

    #[test]
    fn a_rendered_script_is_kept_until_a_watched_folder_changes_and_never_without_a_watch() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("profiles");
        std::fs::create_dir_all(&dir).unwrap();
        let b: BoardName = "b1".parse().unwrap();
        let changes = Changes::new(t.path());
        let kept = Rendered::default();
        let now = changes.snapshot();
        let token = now.token(&[&dir]);
        kept.keep(&b, false, token, bytes::Bytes::from_static(b"#!ipxe\n"));
        assert_eq!(
            kept.get(&b, false, &changes.snapshot()).as_deref(),
            Some(&b"#!ipxe\n"[..])
        );
        assert_eq!(
            kept.get(&b, true, &changes.snapshot()),
            None,
            "imgverify is its own script"
        );
        assert_eq!(
            kept.get(&"b2".parse().unwrap(), false, &changes.snapshot()),
            None
        );
        std::fs::write(dir.join("default.ipxe"), "#!ipxe\necho edited\n").unwrap();
        assert_eq!(
            kept.get(&b, false, &changes.snapshot()),
            None,
            "an edit ends it"
        );
        // Without inotify nothing can vouch for a kept script: it is rendered every time.
        let off = Changes::off();
        let token = off.snapshot().token(&[&dir]);
        kept.keep(&b, false, token, bytes::Bytes::from_static(b"#!ipxe\n"));
        assert_eq!(kept.get(&b, false, &off.snapshot()), None);
    }
}
