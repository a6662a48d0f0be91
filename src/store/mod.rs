//! Everything `ipxe-ca` keeps on disk, and the only code that knows where: the state
//! directory's layout, its lock and atomic writes (`state`), the boards and their index
//! (`registry`), each board's history and console log (`history`), the farm's settings
//! (`config`), and the reload-on-change caches `serve` reads them through (`cached`, told by
//! inotify when nothing changed: `watch`).
//! The operator's verbs (`Lab`), the build and the server sit above it.

pub mod cached;
pub mod config;
pub mod history;
pub mod registry;
pub mod state;
pub mod watch;
