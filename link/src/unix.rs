//! The two halves of a unix-socket link, registered so that a bundle costs each program one
//! wake-up, not two.
//!
//! A unix stream socket signals "writable" to its writer every time the peer *reads* (the
//! kernel's `unix_write_space` runs for each buffer the reader frees, whether or not the writer
//! ever found the socket full; TCP only does so after a write hit a full buffer). With the
//! socket registered for both directions, as `tokio::net::UnixStream` registers it, each bundle
//! one program writes wakes that program again as soon as the other one reads it: an
//! `epoll_wait` return and a context switch per bundle on each side that carry no work (measured
//! on `bench/nat` TCP request/response: three wake-ups per round trip in each program, one of
//! them this).
//!
//! So the halves are split by hand: [`UnixRead`] owns the socket registered for readability only
//! (and, like tokio's own streams, takes a short read as "drained" instead of reading again into
//! `EAGAIN`); [`UnixWrite`] owns a duplicate of the descriptor, unregistered, and writes at once.
//! Only a write that finds the socket full registers the duplicate for writability, waits, and
//! unregisters it again once the write went through. Dropping the writer shuts the socket's
//! write side down (the peer reads end-of-stream, as with tokio's owned write half).
#![allow(
    unsafe_code,
    reason = "registering a descriptor with tokio's reactor by interest is unsafe (I/O safety); one block, in `register`"
)]

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// Splits a connected tokio unix stream into the two halves described in the module docs.
pub(crate) fn split(s: tokio::net::UnixStream) -> io::Result<(UnixRead, UnixWrite)> {
    let s = s.into_std()?;
    let w = s.try_clone()?;
    Ok((
        UnixRead(register(s, Interest::READABLE)?),
        UnixWrite {
            idle: Some(w),
            waiting: None,
        },
    ))
}

/// `s` registered with the reactor for `interest` only.
fn register(s: UnixStream, interest: Interest) -> io::Result<AsyncFd<UnixStream>> {
    // SAFETY: the `AsyncFd` owns `s`, whose descriptor stays open and unchanged until the
    // `AsyncFd` is dropped or gives `s` back through `into_inner` (which deregisters first).
    Ok(unsafe { AsyncFd::register_with_interest(s, interest) }?)
}

/// The read half: the socket, registered for readability only.
#[derive(Debug)]
pub(crate) struct UnixRead(AsyncFd<UnixStream>);

impl AsyncRead for UnixRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let room = buf.initialize_unfilled();
            let want = room.len();
            match guard.try_io(|s| s.get_ref().read(room)) {
                Ok(Ok(n)) => {
                    if n > 0 && n < want {
                        // Less than asked for: the socket is drained, unless more arrived since
                        // the readiness was seen (then the guard's tick keeps it ready).
                        guard.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}

/// The write half: a duplicate of the socket's descriptor, registered for writability only
/// while a write waits for room.
#[derive(Debug)]
pub(crate) struct UnixWrite {
    /// The descriptor while no write waits (unregistered).
    idle: Option<UnixStream>,
    /// The descriptor, registered, while a write waits for room.
    waiting: Option<AsyncFd<UnixStream>>,
}

impl UnixWrite {
    fn stream(&self) -> Option<&UnixStream> {
        self.idle
            .as_ref()
            .or_else(|| self.waiting.as_ref().map(AsyncFd::get_ref))
    }
}

impl AsyncWrite for UnixWrite {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            if let Some(fd) = &self.waiting {
                let mut guard = ready!(fd.poll_write_ready(cx))?;
                let Ok(res) = guard.try_io(|s| s.get_ref().write(data)) else {
                    continue;
                };
                // Room again: unregister until the next write finds the socket full.
                if let Some(fd) = self.waiting.take() {
                    self.idle = Some(fd.into_inner());
                }
                return Poll::Ready(res);
            }
            let Some(s) = self.idle.as_ref() else {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::NotConnected)));
            };
            match (&*s).write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let Some(s) = self.idle.take() else { continue };
                    self.waiting = Some(register(s, Interest::WRITABLE)?);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                res => return Poll::Ready(res),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(
            self.stream()
                .map_or(Ok(()), |s| s.shutdown(Shutdown::Write)),
        )
    }
}

impl Drop for UnixWrite {
    fn drop(&mut self) {
        // The read half holds the socket open too: end our direction explicitly.
        if let Some(s) = self.stream() {
            let _ = s.shutdown(Shutdown::Write);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes both ways, a writer that outruns its reader (the socket fills: the write waits for
    /// room and completes once the peer reads), and end-of-stream when a writer is dropped.
    #[tokio::test]
    async fn halves_carry_bytes_wait_for_room_and_end_the_stream() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (mut ar, mut aw) = split(a).unwrap();
        let (mut br, mut bw) = split(b).unwrap();
        aw.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        br.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        bw.write_all(b"pong").await.unwrap();
        ar.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");

        // Far more than a unix socket buffers: the writer must wait for the reader.
        let big: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        let expect = big.clone();
        let writer = tokio::spawn(async move {
            aw.write_all(&big).await.unwrap();
            assert!(
                aw.waiting.is_none(),
                "unregistered once the write went through"
            );
            drop(aw);
        });
        let mut got = Vec::new();
        br.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), expect.len());
        assert!(got == expect, "bytes changed on the way");
    }
}
