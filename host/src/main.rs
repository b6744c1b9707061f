//! qbkit-host: the laptop-side CLI (filled in by the host issues).

fn main() {
    eprintln!("qbkit-host {}", env!("CARGO_PKG_VERSION"));
}
