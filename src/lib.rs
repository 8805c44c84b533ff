//! kib: builds Kubernetes node disk images from an existing bootable image and a manifest,
//! offline, without booting a VM.
//!
//! The pipeline has three phases, each in its own module: [`phase0`] attaches and mounts the
//! image, [`phase1`] customizes it in a chroot, [`phase2`] cleans it and writes the artifacts.

pub mod manifest;
pub mod guest;
pub mod exec;
pub mod mounts;
pub mod hash;
pub mod phase0;
pub mod workdir;
pub mod phase1;
pub mod phase2;
pub mod cli;
pub mod customize;
pub mod fetch;
pub mod config;
pub mod check;
pub mod cleanup;
pub mod out;
pub mod inspect;
pub mod lock;
pub mod shell;
