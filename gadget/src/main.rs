//! qbkit-gadget: the board daemon (filled in by the gadget issue).

fn main() {
    eprintln!("qbkit-gadget {}", env!("CARGO_PKG_VERSION"));
}
