//! PURE: [`GadgetSpec`] → the ConfigFS operations that create the qbkit gadget, in order, plus the
//! shell fallback rendered from the same list (`configfs/qbkit-gadget.sh`, golden-tested here).
//!
//! # Theory of operation
//!
//! The daemon registers the gadget through the `usb-gadget` crate ([`crate::ffs::usb`]), which
//! writes exactly this sequence (its `Gadget::register` order); the plan exists so the layout is
//! reviewable and testable without root, and so boards without the daemon can build the identical
//! gadget with `sh`. Paths are relative to the ConfigFS mount (`/sys/kernel/config`).
//!
//! Coexistence: everything lives under `usb_gadget/<name>` (default `qbkit`); other gadgets on the
//! board (a serial console, say) are never touched, and `teardown` removes only this directory.
//!
//! Device identity: bcdUSB 0x0201 makes Windows ask for the BOS descriptor; the MS OS 1.0 string
//! descriptor (vendor code 0xf0, `MSFT100`) is enabled through `os_desc/` and points at config 1,
//! whose FunctionFS interface carries the WINUSB compat id and DeviceInterfaceGUID.

use std::fmt::Write as _;

use shared_frame::usb_id::{INTERFACE_NAME, MS_VENDOR_CODE};

use crate::config::GadgetSpec;

/// One ConfigFS (or FunctionFS) step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create a directory.
    Mkdir(String),
    /// Write an attribute.
    Write {
        /// Attribute path.
        path: String,
        /// Value written.
        value: Value,
    },
    /// Create `link` pointing at `target`.
    Symlink {
        /// Existing directory.
        target: String,
        /// New link.
        link: String,
    },
    /// Mount FunctionFS instance `instance` at `dir` and write the `ep0` descriptor blobs.
    FunctionFs {
        /// FunctionFS instance (the part after `ffs.` in the function directory).
        instance: String,
        /// Mount point.
        dir: String,
    },
    /// Bind to the UDC (write `UDC`).
    BindUdc(String),
}

/// An attribute value: literal, or chosen at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Fixed text.
    Lit(String),
    /// The board serial (derived from the machine id unless configured).
    Serial,
    /// The UDC name.
    Udc,
}

/// One line of `qbkit-gadget plan`: what the step does, with paths relative to the ConfigFS mount.
impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Mkdir(d) => write!(f, "mkdir    {d}"),
            Self::Write { path, value } => write!(f, "write    {path} = {value}"),
            Self::Symlink { target, link } => write!(f, "symlink  {link} -> {target}"),
            Self::FunctionFs { instance, dir } => {
                write!(
                    f,
                    "mount    functionfs {instance} on {dir}, write the ep0 descriptors"
                )
            }
            Self::BindUdc(path) => write!(f, "bind     {path} = <udc>"),
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Lit(v) => write!(f, "{v:?}"),
            Self::Serial => f.write_str("<serial>"),
            Self::Udc => f.write_str("<udc>"),
        }
    }
}

fn w(path: impl Into<String>, v: impl Into<String>) -> Op {
    Op::Write {
        path: path.into(),
        value: Value::Lit(v.into()),
    }
}

/// The FunctionFS instance name of the qbkit interface.
pub fn ffs_instance(spec: &GadgetSpec) -> String {
    format!("{}-0", spec.name)
}

/// The FunctionFS mount point.
pub fn ffs_dir(spec: &GadgetSpec) -> String {
    format!("/dev/ffs-{}", ffs_instance(spec))
}

/// The device class triple: per-interface (0/0/0), or IAD (EF/02/01) when CDC-ACM is added.
pub fn device_class(spec: &GadgetSpec) -> (u8, u8, u8) {
    if spec.with_serial {
        (0xef, 0x02, 0x01)
    } else {
        (0, 0, 0)
    }
}

/// The full plan, in the order the `usb-gadget` crate performs it.
pub fn plan(spec: &GadgetSpec) -> Vec<Op> {
    let g = format!("usb_gadget/{}", spec.name);
    let (class, sub, proto) = device_class(spec);
    let mut ops = vec![
        Op::Mkdir(g.clone()),
        w(format!("{g}/bDeviceClass"), format!("0x{class:02x}")),
        w(format!("{g}/bDeviceSubClass"), format!("0x{sub:02x}")),
        w(format!("{g}/bDeviceProtocol"), format!("0x{proto:02x}")),
        w(format!("{g}/idVendor"), format!("0x{:04x}", spec.vendor_id)),
        w(
            format!("{g}/idProduct"),
            format!("0x{:04x}", spec.product_id),
        ),
        w(format!("{g}/bMaxPacketSize0"), "0x40"),
        w(
            format!("{g}/bcdDevice"),
            format!("0x{:04x}", spec.device_release),
        ),
        w(format!("{g}/bcdUSB"), "0x0201"),
        Op::Mkdir(format!("{g}/strings/0x0409")),
        w(
            format!("{g}/strings/0x0409/manufacturer"),
            &spec.manufacturer,
        ),
        w(format!("{g}/strings/0x0409/product"), &spec.product),
        Op::Write {
            path: format!("{g}/strings/0x0409/serialnumber"),
            value: Value::Serial,
        },
    ];
    let ffs_fn = format!("ffs.{}", ffs_instance(spec));
    ops.push(Op::Mkdir(format!("{g}/functions/{ffs_fn}")));
    ops.push(Op::FunctionFs {
        instance: ffs_instance(spec),
        dir: ffs_dir(spec),
    });
    let mut functions = vec![ffs_fn];
    if spec.with_serial {
        let acm = format!("acm.{}-1", spec.name);
        ops.push(Op::Mkdir(format!("{g}/functions/{acm}")));
        functions.push(acm);
    }
    let c = format!("{g}/configs/c.1");
    ops.push(Op::Mkdir(c.clone()));
    ops.push(w(format!("{c}/bmAttributes"), "0x80"));
    ops.push(w(format!("{c}/MaxPower"), spec.max_power_ma.to_string()));
    ops.push(Op::Mkdir(format!("{c}/strings/0x0409")));
    ops.push(w(
        format!("{c}/strings/0x0409/configuration"),
        INTERFACE_NAME,
    ));
    for f in &functions {
        ops.push(Op::Symlink {
            target: format!("{g}/functions/{f}"),
            link: format!("{c}/{f}"),
        });
    }
    ops.push(w(
        format!("{g}/os_desc/b_vendor_code"),
        format!("0x{MS_VENDOR_CODE:02x}"),
    ));
    ops.push(w(format!("{g}/os_desc/qw_sign"), "MSFT100"));
    ops.push(w(format!("{g}/os_desc/use"), "1"));
    ops.push(Op::Symlink {
        target: c.clone(),
        link: format!("{g}/os_desc/c.1"),
    });
    ops.push(Op::BindUdc(format!("{g}/UDC")));
    ops
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Renders the plan as the POSIX shell fallback (`configfs/qbkit-gadget.sh`).
pub fn render_shell(spec: &GadgetSpec) -> String {
    let mut s = String::from(SHELL_HEADER);
    let _ = writeln!(s, "NAME={}", sh_quote(&spec.name));
    let _ = writeln!(s, "FFS_DIR={}", sh_quote(&ffs_dir(spec)));
    s.push_str(SHELL_SETUP);
    for op in plan(spec) {
        match op {
            Op::Mkdir(p) => {
                let _ = writeln!(s, "mkdir -p \"$CFS\"/{}", sh_quote(&p));
            }
            Op::Write { path, value } => {
                let v = match value {
                    Value::Lit(v) => sh_quote(&v),
                    Value::Serial => "\"$SERIAL\"".to_owned(),
                    Value::Udc => "\"$UDC\"".to_owned(),
                };
                let _ = writeln!(s, "printf '%s' {v} > \"$CFS\"/{}", sh_quote(&path));
            }
            Op::Symlink { target, link } => {
                let _ = writeln!(
                    s,
                    "ln -s \"$CFS\"/{} \"$CFS\"/{}",
                    sh_quote(&target),
                    sh_quote(&link)
                );
            }
            Op::FunctionFs { instance, dir } => {
                let _ = writeln!(s, "ffs_init {} {}", sh_quote(&instance), sh_quote(&dir));
            }
            Op::BindUdc(p) => {
                let _ = writeln!(s, "printf '%s' \"$UDC\" > \"$CFS\"/{}", sh_quote(&p));
            }
        }
    }
    s.push_str(SHELL_FOOTER);
    s
}

const SHELL_HEADER: &str = r"#!/bin/sh
# qbkit-gadget shell fallback: builds the same USB gadget as `qbkit-gadget run` (identical ConfigFS
# layout and FunctionFS descriptors) on boards where the daemon is not installed yet, so the laptop
# already sees the device. It does not move packets: start `qbkit-gadget run` to replace it (it
# removes this gadget first), or stop it with `qbkit-gadget.sh stop`.
#
# GENERATED from gadget/src/configfs/plan.rs (`qbkit-gadget plan --shell`); a unit test fails when
# the two differ. Do not edit by hand.
#
# Usage: qbkit-gadget.sh [start|stop]   env: SERIAL=... UDC=... (defaults: machine-id hash, the only UDC)
# Needs: configfs mounted, CONFIG_USB_CONFIGFS_F_FS, and descs-*.bin/strs.bin next to this script.
set -eu
";

const SHELL_SETUP: &str = r#"CFS=/sys/kernel/config
HERE=$(cd "$(dirname "$0")" && pwd)
G="$CFS/usb_gadget/$NAME"
PIDFILE=/run/qbkit-gadget-fallback.pid

stop() {
  [ -d "$G" ] || return 0
  [ -f "$PIDFILE" ] && kill "$(cat "$PIDFILE")" 2>/dev/null || true
  rm -f "$PIDFILE"
  printf '\n' > "$G/UDC" 2>/dev/null || true
  rm -f "$G"/os_desc/c.* "$G"/configs/c.*/*.* 2>/dev/null || true
  rmdir "$G"/configs/c.*/strings/* "$G"/configs/c.* "$G"/functions/* "$G"/strings/* 2>/dev/null || true
  umount "$FFS_DIR" 2>/dev/null || true
  rmdir "$FFS_DIR" "$G" 2>/dev/null || true
}

# Mounts FunctionFS and writes the descriptor blobs to ep0. FunctionFS keeps the function alive only
# while ep0 is open, so a background holder keeps it open until `stop`.
ffs_init() {
  mkdir -p "$2"
  mount -t functionfs "$1" "$2"
  v=$(uname -r | awk -F. '{ if ($1 > 6 || ($1 == 6 && $2 >= 4)) print "v0100"; else print "v0001" }')
  ( exec 3<>"$2/ep0"; cat "$HERE/descs-$v.bin" >&3; cat "$HERE/strs.bin" >&3; exec sleep 2147483647 ) &
  echo $! > "$PIDFILE"
  for _ in 1 2 3 4 5 6 7 8 9 10; do [ -e "$2/ep1" ] && break; sleep 0.2; done
}

case "${1:-start}" in
  stop) stop; exit 0 ;;
  start) ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac

if [ -z "${SERIAL:-}" ]; then
  SERIAL=$(printf 'qbkit-net serial:%s' "$(cat /etc/machine-id)" | sha256sum | cut -c1-12 | tr 'a-f' 'A-F')
fi
if [ -z "${UDC:-}" ]; then
  set -- $(ls /sys/class/udc)
  [ $# -eq 1 ] || { echo "found $# UDCs ($*); set UDC=NAME" >&2; exit 1; }
  UDC=$1
fi
modprobe libcomposite 2>/dev/null || true
[ -d "$G" ] && { echo "$G exists; run '$0 stop' first" >&2; exit 1; }

"#;

const SHELL_FOOTER: &str = r#"echo "qbkit gadget bound to $UDC (serial $SERIAL)"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_lines_read_as_steps() {
        assert_eq!(
            Op::Mkdir("usb_gadget/qbkit".into()).to_string(),
            "mkdir    usb_gadget/qbkit"
        );
        let op = w("usb_gadget/qbkit/idVendor", "0x1209");
        assert_eq!(
            op.to_string(),
            "write    usb_gadget/qbkit/idVendor = \"0x1209\""
        );
    }
    use crate::config::ConfigFile;

    fn spec(with_serial: bool) -> GadgetSpec {
        let mut s = ConfigFile::default().gadget_spec(Some("test-machine"));
        s.with_serial = with_serial;
        s
    }

    fn lit(ops: &[Op], path: &str) -> String {
        ops.iter()
            .find_map(|o| match o {
                Op::Write {
                    path: p,
                    value: Value::Lit(v),
                } if p == path => Some(v.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no write to {path}"))
    }

    #[test]
    fn plan_field_by_field() {
        let ops = plan(&spec(false));
        let g = "usb_gadget/qbkit";
        assert_eq!(ops[0], Op::Mkdir(g.into()));
        assert_eq!(lit(&ops, &format!("{g}/idVendor")), "0x1209");
        assert_eq!(lit(&ops, &format!("{g}/idProduct")), "0x0001");
        assert_eq!(lit(&ops, &format!("{g}/bcdDevice")), "0x0100");
        assert_eq!(lit(&ops, &format!("{g}/bcdUSB")), "0x0201");
        assert_eq!(lit(&ops, &format!("{g}/bDeviceClass")), "0x00");
        assert_eq!(lit(&ops, &format!("{g}/bMaxPacketSize0")), "0x40");
        assert_eq!(
            lit(&ops, &format!("{g}/strings/0x0409/manufacturer")),
            "qbkit"
        );
        assert_eq!(
            lit(&ops, &format!("{g}/strings/0x0409/product")),
            "qbkit-net"
        );
        assert!(ops.contains(&Op::Write {
            path: format!("{g}/strings/0x0409/serialnumber"),
            value: Value::Serial
        }));
        assert!(ops.contains(&Op::Mkdir(format!("{g}/functions/ffs.qbkit-0"))));
        assert!(ops.contains(&Op::FunctionFs {
            instance: "qbkit-0".into(),
            dir: "/dev/ffs-qbkit-0".into()
        }));
        assert_eq!(lit(&ops, &format!("{g}/configs/c.1/bmAttributes")), "0x80");
        assert_eq!(lit(&ops, &format!("{g}/configs/c.1/MaxPower")), "500");
        assert!(ops.contains(&Op::Symlink {
            target: format!("{g}/functions/ffs.qbkit-0"),
            link: format!("{g}/configs/c.1/ffs.qbkit-0")
        }));
        assert_eq!(lit(&ops, &format!("{g}/os_desc/b_vendor_code")), "0xf0");
        assert_eq!(lit(&ops, &format!("{g}/os_desc/qw_sign")), "MSFT100");
        assert_eq!(lit(&ops, &format!("{g}/os_desc/use")), "1");
        assert!(ops.contains(&Op::Symlink {
            target: format!("{g}/configs/c.1"),
            link: format!("{g}/os_desc/c.1")
        }));
        assert_eq!(ops.last(), Some(&Op::BindUdc(format!("{g}/UDC"))));
        // Coexistence: every path stays inside our own gadget directory.
        for op in &ops {
            let p = match op {
                Op::Mkdir(p) | Op::Write { path: p, .. } | Op::BindUdc(p) => p,
                Op::Symlink { link, .. } => link,
                Op::FunctionFs { .. } => continue,
            };
            assert!(p.starts_with("usb_gadget/qbkit"), "{p}");
        }
        assert!(
            !ops.iter()
                .any(|o| matches!(o, Op::Mkdir(p) if p.contains("acm.")))
        );
    }

    #[test]
    fn serial_function_adds_acm_and_iad_class() {
        let ops = plan(&spec(true));
        let g = "usb_gadget/qbkit";
        assert_eq!(lit(&ops, &format!("{g}/bDeviceClass")), "0xef");
        assert_eq!(lit(&ops, &format!("{g}/bDeviceSubClass")), "0x02");
        assert_eq!(lit(&ops, &format!("{g}/bDeviceProtocol")), "0x01");
        assert!(ops.contains(&Op::Mkdir(format!("{g}/functions/acm.qbkit-1"))));
        assert!(ops.contains(&Op::Symlink {
            target: format!("{g}/functions/acm.qbkit-1"),
            link: format!("{g}/configs/c.1/acm.qbkit-1")
        }));
    }

    /// The committed shell fallback and descriptor blobs are exactly what the daemon uses.
    /// Regenerate with `QBKIT_BLESS=1 cargo test -p qbkit-gadget golden`.
    #[test]
    fn golden_shell_fallback_and_blobs() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configfs");
        let script = render_shell(&spec(false));
        let (descs, strs) = crate::ffs::descriptors::blobs().unwrap();
        // The blob's OS-descriptor bcdVersion follows the running kernel; produce both variants.
        let (v0100, v0001) = os_bcd_variants(&descs);
        let files: [(&str, &[u8]); 4] = [
            ("qbkit-gadget.sh", script.as_bytes()),
            ("descs-v0100.bin", &v0100),
            ("descs-v0001.bin", &v0001),
            ("strs.bin", &strs),
        ];
        for (name, want) in files {
            let path = dir.join(name);
            if std::env::var_os("QBKIT_BLESS").is_some() {
                std::fs::write(&path, want).unwrap();
            }
            let have = std::fs::read(&path).unwrap_or_default();
            assert!(
                have == want,
                "{} differs from the plan; run QBKIT_BLESS=1 cargo test -p qbkit-gadget golden",
                path.display()
            );
        }
    }

    /// Returns the descriptor blob with OS descriptor bcdVersion 0x0100 and 0x0001.
    fn os_bcd_variants(descs: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let u32le = |at: usize| u32::from_le_bytes(descs[at..at + 4].try_into().unwrap());
        let counts = [u32le(12), u32le(16), u32le(20)];
        let mut at = 28;
        for _ in 0..counts.iter().sum::<u32>() {
            at += descs[at] as usize;
        }
        let mut a = descs.to_vec();
        let mut b = descs.to_vec();
        for _ in 0..u32le(24) {
            let len = u32le(at + 1) as usize;
            a[at + 5..at + 7].copy_from_slice(&0x0100u16.to_le_bytes());
            b[at + 5..at + 7].copy_from_slice(&0x0001u16.to_le_bytes());
            at += len;
        }
        (a, b)
    }
}
