//! A StatusNotifierWatcher that is slow to start, for `tests/tray/run`.
//!
//! It owns `org.kde.StatusNotifierWatcher` at once, prints `NAME`, and exports the watcher
//! object only when a line arrives on stdin (then prints `EXPORTED`). Until then every call
//! gets `UnknownObject`, which is what real tray hosts do for a moment at startup (they own the
//! name before they export the object) and what ksni does not retry by itself. Registered
//! items are listed in `RegisteredStatusNotifierItems`, as a real watcher does. Exits when
//! stdin closes.
//!
//! ```text
//! slow_watcher            # on a session bus (DBUS_SESSION_BUS_ADDRESS)
//! ```

#[cfg(target_os = "linux")]
mod watcher {
    use std::sync::Mutex;

    use tokio::io::{AsyncBufReadExt, BufReader};
    use zbus::message::Header;
    use zbus::object_server::SignalEmitter;

    #[derive(Default)]
    struct Watcher {
        items: Mutex<Vec<String>>,
    }

    #[zbus::interface(name = "org.kde.StatusNotifierWatcher")]
    #[expect(
        clippy::unused_self,
        reason = "D-Bus methods and properties take &self"
    )]
    impl Watcher {
        async fn register_status_notifier_item(
            &self,
            service: &str,
            #[zbus(header)] header: Header<'_>,
            #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        ) -> zbus::fdo::Result<()> {
            // A path means "the caller's connection, at this path" (what some items send).
            let item = if service.starts_with('/') {
                let sender = header.sender().map(ToString::to_string).unwrap_or_default();
                format!("{sender}{service}")
            } else {
                service.to_owned()
            };
            self.items.lock().expect("items lock").push(item.clone());
            println!("REGISTERED {item}");
            Self::status_notifier_item_registered(&emitter, &item)
                .await
                .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))
        }

        fn register_status_notifier_host(&self, service: &str) {
            println!("HOST {service}");
        }

        #[zbus(property)]
        fn registered_status_notifier_items(&self) -> Vec<String> {
            self.items.lock().expect("items lock").clone()
        }

        #[zbus(property)]
        fn is_status_notifier_host_registered(&self) -> bool {
            true
        }

        #[zbus(property)]
        fn protocol_version(&self) -> i32 {
            0
        }

        #[zbus(signal)]
        async fn status_notifier_item_registered(
            emitter: &SignalEmitter<'_>,
            service: &str,
        ) -> zbus::Result<()>;
    }

    pub(crate) async fn run() -> anyhow::Result<()> {
        let conn = zbus::Connection::session().await?;
        // Start the (empty) object server now, so calls get UnknownObject instead of no reply.
        let _ = conn.object_server();
        conn.request_name("org.kde.StatusNotifierWatcher").await?;
        println!("NAME");
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        if lines.next_line().await?.is_none() {
            return Ok(());
        }
        conn.object_server()
            .at("/StatusNotifierWatcher", Watcher::default())
            .await?;
        println!("EXPORTED");
        while lines.next_line().await?.is_some() {}
        Ok(())
    }
}

#[cfg(target_os = "linux")]
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    watcher::run().await
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("slow_watcher: D-Bus tray hosts are Linux only");
}
