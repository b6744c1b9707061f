//! Tray backend for OSes without one (BSDs, …): says so once and waits for the engine to end,
//! so `qbkit-host tray` still runs the network there.

use tokio::sync::{mpsc, watch};

use super::{Action, Error, Snapshot, TrayConfig};

pub(super) fn run(
    _config: TrayConfig,
    mut snapshots: watch::Receiver<Snapshot>,
    _actions: mpsc::UnboundedSender<Action>,
) -> Result<(), Error> {
    tracing::warn!("no tray icon on this OS; the board's network keeps working");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| Error::Backend(format!("tray runtime: {e}")))?;
    rt.block_on(async { while snapshots.changed().await.is_ok() {} });
    Ok(())
}
