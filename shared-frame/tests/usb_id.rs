//! The files outside Rust that name the board's USB identity (udev rule, Windows INF) agree with
//! `shared_frame::usb_id`. A vendor who changes the VID:PID there is pointed at the lines to change.

use shared_frame::usb_id::{DEVICE_INTERFACE_GUID, PID, VID};

const UDEV_RULE: &str = include_str!("../../udev/70-qbkit.rules");
const WINDOWS_INF: &str = include_str!("../../windows-inf/qbkit.inf");

/// Non-comment lines of a file (`#` for udev, `;` for INF).
fn code_lines<'a>(text: &'a str, comment: &'a str) -> impl Iterator<Item = &'a str> {
    text.lines()
        .map(str::trim)
        .filter(move |l| !l.is_empty() && !l.starts_with(comment))
}

#[test]
fn udev_rule_matches_the_usb_id() {
    let code: Vec<&str> = code_lines(UDEV_RULE, "#").collect();
    let vid = format!("ATTR{{idVendor}}!=\"{VID:04x}\", GOTO=\"qbkit_end\"");
    let pid = format!("ATTR{{idProduct}}!=\"{PID:04x}\", GOTO=\"qbkit_end\"");
    assert!(
        code.contains(&vid.as_str()),
        "udev/70-qbkit.rules must contain `{vid}`"
    );
    assert!(
        code.contains(&pid.as_str()),
        "udev/70-qbkit.rules must contain `{pid}`"
    );
    // Every idVendor/idProduct match names these IDs (no stale copy left behind).
    for l in code
        .iter()
        .filter(|l| l.contains("idVendor") || l.contains("idProduct"))
    {
        assert!(
            *l == vid || *l == pid,
            "udev/70-qbkit.rules: stale USB id in `{l}`"
        );
    }
}

#[test]
fn windows_inf_matches_the_usb_id() {
    let hw_id = format!("USB\\VID_{VID:04X}&PID_{PID:04X}");
    let models: Vec<&str> = code_lines(WINDOWS_INF, ";")
        .filter(|l| l.contains("USB\\VID_"))
        .collect();
    assert_eq!(
        models.len(),
        2,
        "windows-inf/qbkit.inf: one model line per architecture"
    );
    for l in models {
        assert!(
            l.ends_with(&hw_id),
            "windows-inf/qbkit.inf: `{l}` must name {hw_id}"
        );
    }
    let guid = format!("DeviceInterfaceGUIDs,0x10000,\"{DEVICE_INTERFACE_GUID}\"");
    assert!(
        code_lines(WINDOWS_INF, ";").any(|l| l.ends_with(&guid)),
        "windows-inf/qbkit.inf must register {DEVICE_INTERFACE_GUID}"
    );
}
