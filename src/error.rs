//! One error type for the library: each variant says what failed and, where it helps, what to do.

use std::path::PathBuf;

/// Everything the library can refuse or fail at. The binary prints the chain and exits non-zero.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory under the state dir could not be read or written.
    // The OS error is part of the message (not a `source`), so it is printed exactly once.
    #[error("{action} {path}: {err}")]
    Io {
        action: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    /// Input given on the command line or in a file was not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The state dir has no CA yet.
    #[error("no CA in {0}: run `ipxe-ca init` first, or use the state dir that holds the CA")]
    NoCa(PathBuf),
    /// `init` would replace an existing CA and every board certificate with it.
    #[error("a CA already exists in {0}: refusing to replace it (every enrolled board would stop booting)")]
    CaExists(PathBuf),
    /// A board of that name is already registered.
    #[error(
        "board {0:?} is already registered: choose another name, or `ipxe-ca revoke` it first"
    )]
    BoardExists(String),
    /// No board of that name.
    #[error("no board named {0:?}: `ipxe-ca list` shows the registered boards")]
    NoBoard(String),
    /// Certificate or key material could not be created, parsed or verified.
    #[error("{context}: {detail}")]
    Crypto { context: String, detail: String },
    /// A registry or config file exists but does not parse.
    #[error("cannot parse {path}: {detail} (fix or restore the file)")]
    Parse { path: PathBuf, detail: String },
    /// An external program failed or could not be started.
    #[error("{program} failed: {detail}")]
    Command { program: String, detail: String },
    /// `flash` refuses a disk that is neither removable nor USB-attached unless told otherwise.
    #[error("refusing {0}: neither removable nor USB-attached (a fixed disk?)")]
    NotRemovable(String),
    /// The server certificate does not name the host boards reach the server by (iPXE checks
    /// it): every board would refuse the server. `fix` says which change was refused.
    #[error(
        "{}server certificate names {}, but boards reach the server as {host} ({url}) and check that name: every board would refuse the server",
        cert.as_ref().map(|c| format!("{}: ", c.display())).unwrap_or_default(),
        names.join(", ")
    )]
    ServerNameNotCovered {
        /// The certificate file, when one on disk was checked.
        cert: Option<PathBuf>,
        /// The names it carries.
        names: Vec<String>,
        /// The host of `server_url`.
        host: String,
        /// `server_url`.
        url: String,
        /// What was being done when it was found.
        fix: NameFix,
    },
    /// A folder `serve` was confined to was replaced while it ran: it stopped, to be started
    /// again on the new one (a service manager does that on its own).
    #[error(
        "{0} was replaced while serving; serve stopped so that it can be started on the new folder"
    )]
    StateReplaced(PathBuf),
    /// A revoked board is not renewed: its key may be the reason it was revoked.
    #[error("board {0} is revoked: a revoked board is not renewed; enroll it again deliberately")]
    RenewRevoked(String),
    /// A target the board's architecture cannot boot.
    #[error(
        "board {board} is arm64, which boots UEFI only: target {target} is for x86 (BIOS, or a \
         CD around isolinux)"
    )]
    TargetNotForArch {
        /// The board.
        board: String,
        /// The target asked for.
        target: String,
    },
    /// The folder given for boot files holds key material: nothing in it is served.
    #[error(
        "{0} holds key material (the state dir, its key folders, or a build's images): serve \
         boot files from their own directory"
    )]
    FilesHoldKeys(PathBuf),
    /// The server could not start or stopped with an error.
    #[error("server: {0}")]
    Server(String),
}

/// What was being done when a server name was found not covered, so that the caller can
/// say what to do instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameFix {
    /// `init`: the names asked for do not cover the server URL asked for.
    Init,
    /// New server certificates would drop the name boards use.
    ServerCert,
    /// A new server URL the certificates do not name.
    ServerUrl,
    /// Found in the state as it is (`check`, `serve`).
    Existing,
}

/// Shorthand used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error with the path it happened on.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            err: source,
        }
    }

    /// A certificate/key failure with its context.
    pub fn crypto(context: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Error::Crypto {
            context: context.into(),
            detail: detail.to_string(),
        }
    }

    /// Invalid input, with the message shown to the user as is.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}
