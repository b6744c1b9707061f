//! Stream-link authentication: a pre-shared key, and a mutual challenge-response over fresh
//! nonces that both ends run before the first bundle.
//!
//! # Theory of operation
//!
//! The side that dialled is the *initiator*, the side that accepted the *responder* (host and
//! board may be either). Four fixed-size messages, each starting with the header
//! `"QKAU" | version (1) | type`:
//!
//! ```text
//!  initiator                                              responder
//!  Hello     [hdr|1| Ni (32)]                  ──────▶
//!                                              ◀──────    Challenge [hdr|2| Nr (32) | Tr (32)]
//!  Proof     [hdr|3| Ti (32)]                  ──────▶
//!                                              ◀──────    Result    [hdr|4| 0 = accepted, 1 = rejected]
//!
//!  Tr = HMAC-SHA256(K, "qbkit-link-auth" | 0x01 | "responder" | Ni | Nr)
//!  Ti = HMAC-SHA256(K, "qbkit-link-auth" | 0x01 | "initiator" | Ni | Nr)
//! ```
//!
//! Each side picks its 32-byte nonce from the OS's random source for every connection, and
//! accepts the peer only when the peer's tag over *both* nonces verifies (constant-time compare).
//! The transcript binds the protocol label and version, the role of the side that computed the
//! tag, and both nonces, so:
//! - a replayed Challenge or Proof fails (the other side's nonce is new),
//! - a reflected tag fails (a responder's tag is never a valid initiator's tag, and back),
//! - a downgrade is visible (the version is in the header and in the MAC).
//!
//! What it does not do: it authenticates the peer at the start of the connection; it does not
//! encrypt or integrity-protect the bundles that follow. Someone who can rewrite the TCP
//! stream after the handshake (on-path) can still take it over; use SSH or qrexec for links
//! through untrusted networks.
//!
//! # Limits
//!
//! Input is consumed only up to the end of the message the state expects ([`Handshake::wanted`]
//! says how many bytes), so session bytes that follow are never swallowed, and nothing is
//! buffered beyond one 70-byte message. The async wrapper [`authenticate`] bounds the whole
//! exchange by [`HANDSHAKE_TIMEOUT`].

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{LinkRead, LinkWrite};

/// The whole handshake must finish within this, or the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of a key (and of its hex form / 2).
pub const KEY_LEN: usize = 32;
/// Bytes of a nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of a tag (HMAC-SHA256).
pub const TAG_LEN: usize = 32;
/// The message magic.
pub const MAGIC: [u8; 4] = *b"QKAU";
/// The handshake version in every header and MAC.
pub const VERSION: u8 = 1;
/// The protocol label at the start of every MAC input.
pub const LABEL: &[u8] = b"qbkit-link-auth";

const HEADER_LEN: usize = 6;
const MSG_HELLO: u8 = 1;
const MSG_CHALLENGE: u8 = 2;
const MSG_PROOF: u8 = 3;
const MSG_RESULT: u8 = 4;
/// Longest message (Challenge).
pub const MAX_MESSAGE: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;

/// A pre-shared link key (32 random bytes; stored as 64 hex digits).
#[derive(Clone, PartialEq, Eq)]
pub struct LinkKey([u8; KEY_LEN]);

impl fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkKey(..)")
    }
}

impl LinkKey {
    /// A key from raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// A fresh key from the OS's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut k = [0u8; KEY_LEN];
        getrandom::fill(&mut k).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self(k))
    }

    /// Parses the key file text: 64 hex digits; surrounding whitespace and `#` comment lines are
    /// ignored.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let hex: String = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        if hex.len() != 2 * KEY_LEN {
            return Err(KeyError::Format(hex.len()));
        }
        let mut k = [0u8; KEY_LEN];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(pair).map_err(|_| KeyError::Format(hex.len()))?;
            k[i] = u8::from_str_radix(s, 16).map_err(|_| KeyError::Format(hex.len()))?;
        }
        Ok(Self(k))
    }

    /// The key file text (a comment line, then 64 hex digits).
    pub fn to_file_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s =
            String::from("# qbkit-net stream link key: give the same file to --key on both ends\n");
        for b in self.0 {
            // Writing to a String cannot fail.
            let _ = write!(s, "{b:02x}");
        }
        s.push('\n');
        s
    }

    /// Reads a key file. On Unix a file that others can read is accepted with a warning.
    pub fn read_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = std::fs::metadata(path)
                && m.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(path = %path.display(), mode = format!("{:o}", m.permissions().mode() & 0o777),
                    "link key file is readable by other users; chmod 600 it");
            }
        }
        Self::parse(&text).map_err(|e| KeyError::InFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Writes a new key file with mode 0600 (Unix). Refuses to replace an existing file.
    pub fn write_new_file(&self, path: &Path) -> Result<(), KeyError> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let io_err = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut f = opts.open(path).map_err(io_err)?;
        io::Write::write_all(&mut f, self.to_file_text().as_bytes()).map_err(io_err)?;
        f.sync_all().map_err(io_err)
    }
}

/// Reading, writing or making a key failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not 64 hex digits.
    #[error("a link key is 64 hex digits (found {0} characters); make one with `keygen`")]
    Format(usize),
    /// The key file does not parse.
    #[error("link key file {path}: {reason}")]
    InFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The file could not be read or written.
    #[error("link key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// The OS random source failed.
    #[error("random source: {0}")]
    Random(String),
}

/// Which end of the connection this side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRole {
    /// Dialled the connection; speaks first.
    Initiator,
    /// Accepted the connection.
    Responder,
}

impl AuthRole {
    fn label(self) -> &'static [u8] {
        match self {
            Self::Initiator => b"initiator",
            Self::Responder => b"responder",
        }
    }
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The peer sent qbkit bundles without authenticating first.
    #[error("the peer sent link traffic without authenticating: give it the same --key")]
    Unauthenticated,
    /// The bytes are not a handshake message.
    #[error("not a link authentication message (bad magic)")]
    BadMagic,
    /// A handshake version we do not speak.
    #[error("link authentication version {0} not supported (this side speaks {VERSION})")]
    BadVersion(u8),
    /// A message of the wrong type for the state.
    #[error("unexpected link authentication message type {got} (expected {expected})")]
    UnexpectedMessage {
        /// The type received.
        got: u8,
        /// The type the state expects.
        expected: u8,
    },
    /// The peer's tag does not verify: it does not have our key (or replayed/reflected a tag).
    #[error("the peer failed to prove the link key (different --key?)")]
    BadTag,
    /// The responder rejected our proof.
    #[error("the peer rejected our link key (different --key?)")]
    Rejected,
    /// A Result message with an unknown status.
    #[error("bad link authentication result {0}")]
    BadResult(u8),
    /// The stream ended before the handshake finished.
    #[error("the peer closed the connection during link authentication (does it have --key?)")]
    Eof,
    /// The initiator closed the connection after our Challenge: it did not accept our tag.
    #[error("the peer closed the connection after our challenge: it has a different --key")]
    PeerRejected,
    /// The handshake did not finish in time.
    #[error("link authentication did not finish within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
    /// Reading or writing the stream failed.
    #[error("link authentication: {0}")]
    Io(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Responder: waiting for Hello.
    AwaitHello,
    /// Initiator: waiting for Challenge.
    AwaitChallenge,
    /// Responder: waiting for Proof.
    AwaitProof,
    /// Initiator: waiting for Result.
    AwaitResult,
    /// Done, peer authenticated.
    Done,
    /// Failed; no further input is taken.
    Failed,
}

/// The sans-IO handshake of one connection: feed received bytes to
/// [`handle_bytes`](Self::handle_bytes), send what [`poll_transmit`](Self::poll_transmit) returns,
/// until [`is_done`](Self::is_done) (authenticated) or an error.
pub struct Handshake {
    role: AuthRole,
    key: LinkKey,
    local_nonce: [u8; NONCE_LEN],
    peer_nonce: [u8; NONCE_LEN],
    state: State,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("role", &self.role)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// A handshake with `nonce` fresh from a random source (never reuse one). The initiator's
    /// Hello is queued at once.
    pub fn new(role: AuthRole, key: &LinkKey, nonce: [u8; NONCE_LEN]) -> Self {
        let mut h = Self {
            role,
            key: key.clone(),
            local_nonce: nonce,
            peer_nonce: [0; NONCE_LEN],
            state: match role {
                AuthRole::Initiator => State::AwaitChallenge,
                AuthRole::Responder => State::AwaitHello,
            },
            buf: Vec::with_capacity(MAX_MESSAGE),
            out: Vec::new(),
        };
        if role == AuthRole::Initiator {
            h.push_message(MSG_HELLO, &nonce);
        }
        h
    }

    /// True once the peer proved the key and (initiator) accepted ours: session bytes may flow
    /// after the last [`poll_transmit`](Self::poll_transmit).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// How many more bytes the current message needs (0 when done or failed). Read at most this
    /// many so that no session byte is taken from the stream.
    pub fn wanted(&self) -> usize {
        self.expected_len().map_or(0, |n| n - self.buf.len())
    }

    /// The error for a stream that ended now: after a responder's Challenge the initiator
    /// checked our tag and gave up, so its key differs.
    pub fn eof_error(&self) -> AuthError {
        if self.state == State::AwaitProof {
            AuthError::PeerRejected
        } else {
            AuthError::Eof
        }
    }

    /// Bytes to send now, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.out.is_empty()).then(|| std::mem::take(&mut self.out))
    }

    /// Feeds received bytes; returns how many were consumed (never more than the current
    /// message needs; the rest belong to the session or are an error). After an error the
    /// handshake takes no more input and the connection must be closed (after sending whatever
    /// [`poll_transmit`](Self::poll_transmit) still returns: a responder's rejection).
    pub fn handle_bytes(&mut self, data: &[u8]) -> Result<usize, AuthError> {
        let mut used = 0;
        while used < data.len() {
            let Some(need) = self.expected_len() else {
                break;
            };
            let take = (need - self.buf.len()).min(data.len() - used);
            self.buf.extend_from_slice(&data[used..used + take]);
            used += take;
            if let Err(e) = self.check_header() {
                self.state = State::Failed;
                return Err(e);
            }
            if self.buf.len() == need {
                let msg = std::mem::take(&mut self.buf);
                if let Err(e) = self.handle_message(&msg) {
                    self.state = State::Failed;
                    return Err(e);
                }
            }
        }
        Ok(used)
    }

    fn expected(&self) -> Option<(u8, usize)> {
        match self.state {
            State::AwaitHello => Some((MSG_HELLO, HEADER_LEN + NONCE_LEN)),
            State::AwaitChallenge => Some((MSG_CHALLENGE, HEADER_LEN + NONCE_LEN + TAG_LEN)),
            State::AwaitProof => Some((MSG_PROOF, HEADER_LEN + TAG_LEN)),
            State::AwaitResult => Some((MSG_RESULT, HEADER_LEN + 1)),
            State::Done | State::Failed => None,
        }
    }

    fn expected_len(&self) -> Option<usize> {
        self.expected().map(|(_, n)| n)
    }

    /// Checks as much of the header as has arrived, so a wrong peer fails at its first bytes.
    fn check_header(&self) -> Result<(), AuthError> {
        let b = &self.buf;
        let n = b.len().min(MAGIC.len());
        if b[..n] != MAGIC[..n] {
            // A keyless qbkit peer starts with a bundle ("QK" + framing version, not 'A').
            return Err(if n >= 3 && b[..2] == *b"QK" {
                AuthError::Unauthenticated
            } else {
                AuthError::BadMagic
            });
        }
        if let Some(&v) = b.get(4)
            && v != VERSION
        {
            return Err(AuthError::BadVersion(v));
        }
        if let (Some(&t), Some((expected, _))) = (b.get(5), self.expected())
            && t != expected
        {
            return Err(AuthError::UnexpectedMessage { got: t, expected });
        }
        Ok(())
    }

    fn handle_message(&mut self, msg: &[u8]) -> Result<(), AuthError> {
        let body = &msg[HEADER_LEN..];
        match self.state {
            State::AwaitHello => {
                self.peer_nonce.copy_from_slice(body);
                let tag = self.tag(AuthRole::Responder);
                let mut m = [0u8; NONCE_LEN + TAG_LEN];
                m[..NONCE_LEN].copy_from_slice(&self.local_nonce);
                m[NONCE_LEN..].copy_from_slice(&tag);
                self.push_message(MSG_CHALLENGE, &m);
                self.state = State::AwaitProof;
            }
            State::AwaitChallenge => {
                self.peer_nonce.copy_from_slice(&body[..NONCE_LEN]);
                self.verify(AuthRole::Responder, &body[NONCE_LEN..])?;
                let tag = self.tag(AuthRole::Initiator);
                self.push_message(MSG_PROOF, &tag);
                self.state = State::AwaitResult;
            }
            State::AwaitProof => {
                if let Err(e) = self.verify(AuthRole::Initiator, body) {
                    self.push_message(MSG_RESULT, &[1]);
                    return Err(e);
                }
                self.push_message(MSG_RESULT, &[0]);
                self.state = State::Done;
            }
            State::AwaitResult => match body[0] {
                0 => self.state = State::Done,
                1 => return Err(AuthError::Rejected),
                s => return Err(AuthError::BadResult(s)),
            },
            State::Done | State::Failed => {}
        }
        Ok(())
    }

    /// The (initiator nonce, responder nonce) pair, whichever side we are.
    fn nonces(&self) -> (&[u8; NONCE_LEN], &[u8; NONCE_LEN]) {
        match self.role {
            AuthRole::Initiator => (&self.local_nonce, &self.peer_nonce),
            AuthRole::Responder => (&self.peer_nonce, &self.local_nonce),
        }
    }

    fn mac(&self, signer: AuthRole) -> Hmac<Sha256> {
        // HMAC pads a key shorter than the block with zeros (RFC 2104, 2): the 64-byte block
        // with our 32 bytes first is the same MAC key, and `new` on it cannot fail.
        let mut block = [0u8; 64];
        block[..KEY_LEN].copy_from_slice(&self.key.0);
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
        let (ni, nr) = self.nonces();
        mac.update(LABEL);
        mac.update(&[VERSION]);
        mac.update(signer.label());
        mac.update(ni);
        mac.update(nr);
        mac
    }

    fn tag(&self, signer: AuthRole) -> [u8; TAG_LEN] {
        self.mac(signer).finalize().into_bytes().into()
    }

    fn verify(&self, signer: AuthRole, tag: &[u8]) -> Result<(), AuthError> {
        self.mac(signer)
            .verify_slice(tag)
            .map_err(|_| AuthError::BadTag)
    }

    fn push_message(&mut self, kind: u8, body: &[u8]) {
        self.out.extend_from_slice(&MAGIC);
        self.out.push(VERSION);
        self.out.push(kind);
        self.out.extend_from_slice(body);
    }
}

/// Process-wide handshake counters (shown by `qbkit-host status`).
#[derive(Debug, Default)]
pub struct AuthCounters {
    /// Handshakes that authenticated the peer.
    pub ok: AtomicU64,
    /// Handshakes that failed (wrong key, garbage, peer closed).
    pub failed: AtomicU64,
    /// Handshakes that did not finish within [`HANDSHAKE_TIMEOUT`].
    pub timed_out: AtomicU64,
    /// Connections refused because too many handshakes were already running.
    pub busy: AtomicU64,
}

/// The counters of this process.
pub static COUNTERS: AuthCounters = AuthCounters {
    ok: AtomicU64::new(0),
    failed: AtomicU64::new(0),
    timed_out: AtomicU64::new(0),
    busy: AtomicU64::new(0),
};

impl AuthCounters {
    /// A snapshot under the names `status` shows (`link_auth_*`).
    pub fn named(&self) -> [(String, u64); 4] {
        [
            ("link_auth_ok", &self.ok),
            ("link_auth_failed", &self.failed),
            ("link_auth_timed_out", &self.timed_out),
            ("link_auth_busy", &self.busy),
        ]
        .map(|(k, v)| (k.to_owned(), v.load(Ordering::Relaxed)))
    }
}

/// `keygen FILE` of both programs: writes a fresh key file (mode 0600, never replacing one) and
/// returns the line to tell the user.
pub fn keygen(path: &Path) -> Result<String, KeyError> {
    LinkKey::generate()?.write_new_file(path)?;
    Ok(format!(
        "wrote {} (mode 0600): give the same file to --key on both ends",
        path.display()
    ))
}

/// Runs the handshake on a fresh stream, bounded by [`HANDSHAKE_TIMEOUT`]. Reads no byte past
/// the handshake, so the stream goes to the session intact. Counts the outcome in [`COUNTERS`].
pub async fn authenticate(
    (mut read, mut write): (LinkRead, LinkWrite),
    role: AuthRole,
    key: &LinkKey,
) -> Result<(LinkRead, LinkWrite), AuthError> {
    bounded_and_counted(run_handshake(&mut read, &mut write, role, key)).await?;
    Ok((read, write))
}

/// [`authenticate`] on any stream that stays the caller's, e.g. a `TcpStream` whose socket goes
/// elsewhere afterwards (the USB/IP device-side connect hands it to the kernel). Same bound,
/// same counters, no byte read past the handshake.
pub async fn authenticate_stream<S>(
    stream: &mut S,
    role: AuthRole,
    key: &LinkKey,
) -> Result<(), AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut read, mut write) = tokio::io::split(stream);
    bounded_and_counted(run_handshake(&mut read, &mut write, role, key)).await
}

/// Bounds a handshake by [`HANDSHAKE_TIMEOUT`] and counts its outcome.
async fn bounded_and_counted(
    handshake: impl Future<Output = Result<(), AuthError>>,
) -> Result<(), AuthError> {
    let res = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await;
    let counter = match &res {
        Ok(Ok(())) => &COUNTERS.ok,
        Ok(Err(_)) => &COUNTERS.failed,
        Err(_) => &COUNTERS.timed_out,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    res.unwrap_or(Err(AuthError::Timeout))
}

async fn run_handshake<R, W>(
    read: &mut R,
    write: &mut W,
    role: AuthRole,
    key: &LinkKey,
) -> Result<(), AuthError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let io = |e: io::Error| AuthError::Io(e.to_string());
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| AuthError::Io(format!("random source: {e}")))?;
    let mut hs = Handshake::new(role, key, nonce);
    let mut buf = [0u8; MAX_MESSAGE];
    loop {
        if let Some(out) = hs.poll_transmit() {
            write.write_all(&out).await.map_err(io)?;
            write.flush().await.map_err(io)?;
        }
        if hs.is_done() {
            return Ok(());
        }
        let want = hs.wanted();
        let n = read.read(&mut buf[..want]).await.map_err(io)?;
        if n == 0 {
            return Err(hs.eof_error());
        }
        if let Err(e) = hs.handle_bytes(&buf[..n]) {
            // A responder tells the initiator it was rejected, so its log says why.
            if let Some(out) = hs.poll_transmit() {
                let _ = write.write_all(&out).await;
                let _ = write.flush().await;
            }
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> LinkKey {
        LinkKey::from_bytes([b; KEY_LEN])
    }

    /// Runs both sides to completion in memory; returns each side's result.
    fn run(
        ki: &LinkKey,
        kr: &LinkKey,
    ) -> (
        Result<(), AuthError>,
        Result<(), AuthError>,
        Handshake,
        Handshake,
    ) {
        let mut i = Handshake::new(AuthRole::Initiator, ki, [1; NONCE_LEN]);
        let mut r = Handshake::new(AuthRole::Responder, kr, [2; NONCE_LEN]);
        let (mut ri, mut rr) = (Ok(()), Ok(()));
        for _ in 0..4 {
            if let Some(b) = i.poll_transmit()
                && rr.is_ok()
            {
                rr = r.handle_bytes(&b).map(|n| assert_eq!(n, b.len()));
            }
            if let Some(b) = r.poll_transmit()
                && ri.is_ok()
            {
                ri = i.handle_bytes(&b).map(|n| assert_eq!(n, b.len()));
            }
        }
        (ri, rr, i, r)
    }

    #[test]
    fn same_key_authenticates_both_ways() {
        let (ri, rr, i, r) = run(&key(7), &key(7));
        assert_eq!((ri, rr), (Ok(()), Ok(())));
        assert!(i.is_done() && r.is_done());
        assert_eq!((i.wanted(), r.wanted()), (0, 0));
    }

    #[test]
    fn wrong_key_fails_on_both_sides() {
        // The initiator checks the responder's tag first: it never sends a proof.
        let (ri, rr, i, r) = run(&key(7), &key(8));
        assert_eq!(ri, Err(AuthError::BadTag));
        assert_eq!(rr, Ok(()));
        assert!(!i.is_done() && !r.is_done());
        // The initiator hangs up; the responder knows why.
        assert_eq!(r.eof_error(), AuthError::PeerRejected);
        assert_eq!(i.eof_error(), AuthError::Eof);
    }

    #[test]
    fn responder_rejects_a_bad_proof_and_says_so() {
        let k = key(3);
        let mut r = Handshake::new(AuthRole::Responder, &k, [2; NONCE_LEN]);
        let mut hello = MAGIC.to_vec();
        hello.extend([VERSION, MSG_HELLO]);
        hello.extend([9; NONCE_LEN]);
        assert_eq!(r.handle_bytes(&hello), Ok(hello.len()));
        assert!(r.poll_transmit().is_some());
        let mut proof = MAGIC.to_vec();
        proof.extend([VERSION, MSG_PROOF]);
        proof.extend([0; TAG_LEN]);
        assert_eq!(r.handle_bytes(&proof), Err(AuthError::BadTag));
        let out = r.poll_transmit().unwrap();
        assert_eq!(out[5..], [MSG_RESULT, 1]);
        assert!(!r.is_done());
        // An initiator told so reports the rejection.
        let mut i = Handshake::new(AuthRole::Initiator, &k, [1; NONCE_LEN]);
        i.state = State::AwaitResult;
        assert_eq!(i.handle_bytes(&out), Err(AuthError::Rejected));
    }

    #[test]
    fn truncated_input_waits_and_byte_by_byte_works() {
        let k = key(5);
        let mut i = Handshake::new(AuthRole::Initiator, &k, [1; NONCE_LEN]);
        let mut r = Handshake::new(AuthRole::Responder, &k, [2; NONCE_LEN]);
        let hello = i.poll_transmit().unwrap();
        for (n, b) in hello.iter().enumerate() {
            assert_eq!(r.wanted(), hello.len() - n);
            assert_eq!(r.handle_bytes(&[*b]), Ok(1));
            if n + 1 < hello.len() {
                assert!(
                    r.poll_transmit().is_none(),
                    "no answer before the whole Hello"
                );
            }
        }
        let chal = r.poll_transmit().unwrap();
        // A truncated Challenge: the initiator waits, it neither fails nor answers.
        assert_eq!(i.handle_bytes(&chal[..40]), Ok(40));
        assert!(i.poll_transmit().is_none() && !i.is_done());
        assert_eq!(i.handle_bytes(&chal[40..]), Ok(chal.len() - 40));
        let proof = i.poll_transmit().unwrap();
        assert_eq!(r.handle_bytes(&proof), Ok(proof.len()));
        assert!(r.is_done());
    }

    #[test]
    fn bytes_after_the_handshake_are_not_consumed() {
        let k = key(5);
        let mut i = Handshake::new(AuthRole::Initiator, &k, [1; NONCE_LEN]);
        let mut r = Handshake::new(AuthRole::Responder, &k, [2; NONCE_LEN]);
        r.handle_bytes(&i.poll_transmit().unwrap()).unwrap();
        i.handle_bytes(&r.poll_transmit().unwrap()).unwrap();
        let mut proof = i.poll_transmit().unwrap();
        let len = proof.len();
        proof.extend_from_slice(b"QK\x01session bytes");
        assert_eq!(r.handle_bytes(&proof), Ok(len));
        assert!(r.is_done());
        let mut result = r.poll_transmit().unwrap();
        let len = result.len();
        result.extend_from_slice(b"QK\x01");
        assert_eq!(i.handle_bytes(&result), Ok(len));
        assert!(i.is_done());
    }

    #[test]
    fn replayed_challenge_fails_with_a_new_initiator_nonce() {
        let k = key(4);
        // Record a complete, valid exchange.
        let mut i1 = Handshake::new(AuthRole::Initiator, &k, [1; NONCE_LEN]);
        let mut r1 = Handshake::new(AuthRole::Responder, &k, [2; NONCE_LEN]);
        r1.handle_bytes(&i1.poll_transmit().unwrap()).unwrap();
        let chal = r1.poll_transmit().unwrap();
        i1.handle_bytes(&chal).unwrap();
        let proof = i1.poll_transmit().unwrap();
        // Replay the Challenge to an initiator with a fresh nonce: rejected.
        let mut i2 = Handshake::new(AuthRole::Initiator, &k, [3; NONCE_LEN]);
        assert_eq!(i2.handle_bytes(&chal), Err(AuthError::BadTag));
        // Replay the Proof to a responder with a fresh nonce (after the same Hello): rejected.
        let mut r2 = Handshake::new(AuthRole::Responder, &k, [4; NONCE_LEN]);
        r2.handle_bytes(
            &Handshake::new(AuthRole::Initiator, &k, [1; NONCE_LEN])
                .poll_transmit()
                .unwrap(),
        )
        .unwrap();
        let _ = r2.poll_transmit();
        assert_eq!(r2.handle_bytes(&proof), Err(AuthError::BadTag));
        assert!(!r2.is_done());
    }

    #[test]
    fn reflected_tag_fails() {
        // An attacker without the key connects to a responder, gets its Challenge (Nr, Tr), and
        // sends Tr back as its own Proof: a responder's tag is not an initiator's.
        let k = key(6);
        let mut r = Handshake::new(AuthRole::Responder, &k, [2; NONCE_LEN]);
        let mut hello = MAGIC.to_vec();
        hello.extend([VERSION, MSG_HELLO]);
        hello.extend([1; NONCE_LEN]);
        r.handle_bytes(&hello).unwrap();
        let chal = r.poll_transmit().unwrap();
        let tr = &chal[HEADER_LEN + NONCE_LEN..];
        let mut proof = MAGIC.to_vec();
        proof.extend([VERSION, MSG_PROOF]);
        proof.extend_from_slice(tr);
        assert_eq!(r.handle_bytes(&proof), Err(AuthError::BadTag));
        // And a Challenge built from the initiator's own nonce echoed back (Nr = Ni) with a
        // reflected Hello does not verify at the initiator either.
        let mut i = Handshake::new(AuthRole::Initiator, &k, [1; NONCE_LEN]);
        let mut fake = MAGIC.to_vec();
        fake.extend([VERSION, MSG_CHALLENGE]);
        fake.extend([1; NONCE_LEN]);
        fake.extend([0; TAG_LEN]);
        assert_eq!(i.handle_bytes(&fake), Err(AuthError::BadTag));
    }

    #[test]
    fn garbage_and_keyless_peers_fail_at_the_first_bytes() {
        let k = key(1);
        let mut r = Handshake::new(AuthRole::Responder, &k, [2; NONCE_LEN]);
        assert_eq!(
            r.handle_bytes(b"GET / HTTP/1.1\r\n"),
            Err(AuthError::BadMagic)
        );
        // Further input is ignored after a failure.
        assert_eq!(r.handle_bytes(b"more"), Ok(0));
        let mut r = Handshake::new(AuthRole::Responder, &k, [2; NONCE_LEN]);
        assert_eq!(
            r.handle_bytes(b"QK\x01\x00"),
            Err(AuthError::Unauthenticated)
        );
        let mut r = Handshake::new(AuthRole::Responder, &k, [2; NONCE_LEN]);
        assert_eq!(r.handle_bytes(b"QKAU\x02"), Err(AuthError::BadVersion(2)));
        let mut r = Handshake::new(AuthRole::Responder, &k, [2; NONCE_LEN]);
        assert_eq!(
            r.handle_bytes(b"QKAU\x01\x03"),
            Err(AuthError::UnexpectedMessage {
                got: MSG_PROOF,
                expected: MSG_HELLO
            })
        );
        // An initiator getting a Hello back (a reflecting peer) fails on the type.
        let mut i = Handshake::new(AuthRole::Initiator, &k, [1; NONCE_LEN]);
        let hello = i.poll_transmit().unwrap();
        assert!(matches!(
            i.handle_bytes(&hello),
            Err(AuthError::UnexpectedMessage { got: MSG_HELLO, .. })
        ));
        let mut i = Handshake::new(AuthRole::Initiator, &k, [1; NONCE_LEN]);
        i.state = State::AwaitResult;
        assert_eq!(
            i.handle_bytes(b"QKAU\x01\x04\x07"),
            Err(AuthError::BadResult(7))
        );
    }

    #[test]
    fn key_file_text_round_trips_and_bad_text_is_refused() {
        let k = LinkKey::from_bytes(core::array::from_fn(|i| i as u8));
        let text = k.to_file_text();
        assert!(text.contains("000102030405"));
        assert_eq!(LinkKey::parse(&text).unwrap(), k);
        assert!(matches!(LinkKey::parse("abcd"), Err(KeyError::Format(4))));
        assert!(LinkKey::parse(&"zz".repeat(KEY_LEN)).is_err());
        assert!(LinkKey::parse(&"é".repeat(KEY_LEN)).is_err());
        assert_ne!(LinkKey::generate().unwrap(), LinkKey::generate().unwrap());
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_written_0600_and_never_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("qbkit-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("link.key");
        let _ = std::fs::remove_file(&path);
        let k = LinkKey::generate().unwrap();
        k.write_new_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(LinkKey::read_file(&path).unwrap(), k);
        assert!(matches!(
            LinkKey::generate().unwrap().write_new_file(&path),
            Err(KeyError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn async_handshake_over_a_duplex_leaves_session_bytes_intact() {
        let (a, b) = tokio::io::duplex(256);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let k = key(9);
        let k2 = k.clone();
        let resp = tokio::spawn(async move {
            let (mut r, _w) = authenticate((Box::pin(br), Box::pin(bw)), AuthRole::Responder, &k2)
                .await
                .unwrap();
            let mut got = [0u8; 5];
            r.read_exact(&mut got).await.unwrap();
            got
        });
        let (_r, mut w) = authenticate((Box::pin(ar), Box::pin(aw)), AuthRole::Initiator, &k)
            .await
            .unwrap();
        w.write_all(b"QK\x01hi").await.unwrap();
        assert_eq!(&resp.await.unwrap(), b"QK\x01hi");
    }

    #[tokio::test]
    async fn async_wrong_key_names_the_cause_on_both_sides() {
        let (a, b) = tokio::io::duplex(256);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let resp = tokio::spawn(async move {
            authenticate((Box::pin(br), Box::pin(bw)), AuthRole::Responder, &key(1))
                .await
                .err()
        });
        let init = authenticate((Box::pin(ar), Box::pin(aw)), AuthRole::Initiator, &key(2))
            .await
            .err();
        assert_eq!(init, Some(AuthError::BadTag));
        assert_eq!(resp.await.unwrap(), Some(AuthError::PeerRejected));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peer_times_out() {
        let (a, _b) = tokio::io::duplex(256);
        let (ar, aw) = tokio::io::split(a);
        let before = COUNTERS.timed_out.load(Ordering::Relaxed);
        let res = authenticate((Box::pin(ar), Box::pin(aw)), AuthRole::Responder, &key(1)).await;
        assert!(matches!(res, Err(AuthError::Timeout)));
        assert!(COUNTERS.timed_out.load(Ordering::Relaxed) > before);
    }
}
