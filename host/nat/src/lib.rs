//! qbkit-nat: the I/O-free userspace NAT core of qbkit-host (filled in by the NAT issue).
#![forbid(unsafe_code)]
