//! The boot decisions, free of HTTP: which board a verified certificate belongs to and whether
//! it may have what it asks for (`select`), and the board's script (`script`). `routes` turns
//! requests into these calls and their answers into HTTP; `console` asks `select` the same
//! question for a console connection.

use std::sync::Arc;

use super::log;
use super::shared::Shared;
use super::verdict::{Denial, Outcome, Verdict};
use crate::board::{Board, Status};
use crate::render::Context;
use crate::store::watch::Snapshot;
use crate::types::{Fingerprint, Mac, Serial};

/// A board's script: which board the certificate is and whether it may boot (`select`), then
/// its profile rendered.
pub(crate) fn boot(
    shared: &Arc<Shared>,
    fp: &Fingerprint,
    seen_serial: Option<&Serial>,
    mac: Option<&str>,
    imgverify: bool,
    out: &mut Outcome,
) -> Result<bytes::Bytes, Denial> {
    // One look at what changed on disk, before any cache is trusted.
    let now = shared.changes.snapshot();
    let board = select(fp, seen_serial, mac, shared, &now, out)?;
    script(shared, &board, imgverify, &now)
}

/// Step 2, which board that is and whether it may have what it asks for: a registered
/// certificate, the serial the proxy saw, not revoked, the MAC it names (if any) its own.
pub(crate) fn select(
    fp: &Fingerprint,
    seen_serial: Option<&Serial>,
    mac: Option<&str>,
    shared: &Shared,
    now: &Snapshot,
    out: &mut Outcome,
) -> Result<Arc<Board>, Denial> {
    out.fingerprint = Some(fp.to_string());
    let board = match shared.boards.by_fingerprint(fp, now) {
        Ok(Some(b)) => b,
        Ok(None) => {
            return Err(Denial::forbidden(
                Verdict::Unknown,
                format!("certificate {fp} is not registered (ipxe-ca enroll/register)"),
            ))
        }
        Err(e) => {
            log::say(&format!("ipxe-ca: registry lookup failed: {e}"));
            return Err(Denial {
                why: "registry error; see the server log".to_string(),
                verdict: Verdict::ServerError,
            });
        }
    };
    out.board = Some(board.name.to_string());
    let Some(cert) = board.presented(fp) else {
        return Err(Denial::forbidden(
            Verdict::Unknown,
            "certificate not registered",
        ));
    };
    out.serial = Some(seen_serial.unwrap_or(cert.serial).to_string());
    if seen_serial.is_some_and(|s| s != cert.serial) {
        return Err(Denial::forbidden(
            Verdict::Refused,
            "certificate serial does not match the registry",
        ));
    }
    if cert.revoked && cert.previous && board.status == Status::Active {
        return Err(Denial::forbidden(
            Verdict::Revoked,
            format!(
                "this is an old certificate of board {}, revoked after renewal: flash its new image (ipxe-ca build)",
                board.name
            ),
        ));
    }
    if cert.revoked || shared.revoked.contains(cert.serial, now) {
        return Err(Denial::forbidden(
            Verdict::Revoked,
            format!("board {} is revoked", board.name),
        ));
    }
    if let (Some(registered), Some(asked)) = (board.mac, mac) {
        if asked.parse::<Mac>().ok() != Some(registered) {
            return Err(Denial::forbidden(
                Verdict::MacMismatch,
                format!(
                    "MAC mismatch: board {} is registered with {registered}, request names {asked}",
                    board.name
                ),
            ));
        }
    }
    Ok(board)
}

/// Step 3, the script: the board's profile rendered with its variables and secrets.
pub(crate) fn script(
    shared: &Arc<Shared>,
    board: &Board,
    imgverify: bool,
    now: &Snapshot,
) -> Result<bytes::Bytes, Denial> {
    if let Some(kept) = shared.scripts.get(&board.name, imgverify, now) {
        return Ok(kept);
    }
    // Taken before anything is read: an edit after it makes the script rendered now stale.
    let inputs = shared.registry.state().script_inputs(&board.name);
    let token = now.token(&inputs.each_ref().map(|p| p.as_path()));
    let one_time_used = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rendered = (|| {
        let secrets = shared.boards.secrets(&board.name, now)?;
        let (config, changed) = shared.config.get(now, log::say);
        if changed {
            warn_unnamed(&shared.server_names, &config, shared.registry.state());
        }
        let ctx = Context::for_board(board, &config, secrets, imgverify);
        let path = shared.registry.state().profile(&board.profile);
        let s = shared.clone();
        let c = ctx.clone();
        let used = one_time_used.clone();
        let one_time = minijinja::Value::from_function(
            move |name: String| -> Result<String, minijinja::Error> {
                used.store(true, std::sync::atomic::Ordering::Relaxed);
                let err =
                    |m: String| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, m);
                let p = s
                    .registry
                    .state()
                    .secret_template(&name)
                    .map_err(|e| err(e.to_string()))?;
                let body = s
                    .templates
                    .render_file(&p, &c, &[], &s.changes.snapshot())
                    .map_err(|e| err(e.to_string()))?;
                let token = s
                    .one_time
                    .insert(&c.board.name, &name, body, s.opts.one_time_ttl)
                    .ok_or_else(|| err("random number generator failed".into()))?;
                Ok(format!("{}/secret/{token}", config.server_url))
            },
        );
        shared
            .templates
            .render_file(&path, &ctx, &[("one_time_url", one_time)], now)
    })();
    let rendered = rendered.map(|text| {
        let text = bytes::Bytes::from(text);
        if !one_time_used.load(std::sync::atomic::Ordering::Relaxed) {
            shared
                .scripts
                .keep(&board.name, imgverify, token, text.clone());
        }
        text
    });
    rendered.map_err(|e| {
        log::say(&format!(
            "ipxe-ca: cannot render profile {:?} for board {}: {e}",
            board.profile.as_str(),
            board.name
        ));
        Denial {
            why: format!(
                "profile {} cannot be rendered; see the server log",
                board.profile
            ),
            verdict: Verdict::TemplateError,
        }
    })
}

/// A server host the server certificates do not name is the operator's to mend (boards would
/// refuse the server): said, at start and when an edit brings it, not fatal.
pub(crate) fn warn_unnamed(
    names: &crate::store::cached::Cached<super::shared::ServerNames>,
    config: &crate::store::config::Config,
    state: &crate::store::state::StateDir,
) {
    use crate::store::cached::Look;
    let (certs, _) = names.get(Look::Every(std::time::Duration::ZERO), |_| {
        Ok::<_, std::convert::Infallible>(Some(super::shared::read_server_names(state)))
    });
    let problem = match &*certs {
        Ok(certs) => crate::health::names_cover(certs, config, crate::error::NameFix::Existing)
            .err()
            .map(|e| e.to_string()),
        Err(e) => Some(e.clone()),
    };
    if let Some(e) = problem {
        log::say(&format!(
            "ipxe-ca: warning: {e}; `ipxe-ca check` says what to do"
        ));
    }
}
