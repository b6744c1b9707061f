//! ConfigFS layout of the qbkit gadget as data ([`plan`]) and the shell fallback rendered from it.

pub mod plan;
