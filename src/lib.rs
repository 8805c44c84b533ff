//! kib: builds Kubernetes node disk images from an existing bootable image and a manifest,
//! offline, without booting a VM.
//!
//! The pipeline has three phases, each in its own module: [`phase0`] attaches and mounts the
//! image, [`phase1`] customizes it in a chroot, [`phase2`] cleans it and writes the artifacts.
//! [`cmd`] has one module per subcommand, on top of everything; nothing imports a command, and no
//! module imports from a later phase. Below the phases: [`manifest`], [`pkg`] (package databases
//! and managers), [`sys`] (the seam over loop devices, mounts, probes and host commands),
//! [`fetch`], [`guest`], [`exec`], the build cache [`buildcache`], and the records [`bom`] and
//! [`lock`].

pub mod backend;
pub mod bases;
pub mod bolt;
pub mod boot;
pub mod bom;
pub mod buildcache;
pub mod check;
pub mod cleanup;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod context;
pub mod exec;
pub mod fetch;
pub mod format;
pub mod guest;
pub mod guestfs;
pub mod hash;
pub mod input;
pub mod inspect;
pub mod lock;
pub mod manifest;
pub mod matrix;
pub mod mounts;
pub mod out;
pub mod phase0;
pub mod phase1;
pub mod phase2;
pub mod progress;
pub mod pkg;
pub mod selinux;
pub mod sys;
pub mod ui;
pub mod workdir;
